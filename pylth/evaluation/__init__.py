"""How a model is scored: FID/KID against a data set's reference statistics (``fid``: FidEvaluator), the
features they use (``features``: Inception or a label classifier), and the held-out denoising loss."""
