"""DDPM and DDIM sample exactly what they sampled before the samplers became objects (issue 13).

The denoiser is a polynomial of its input, with no matrix products, so these samples are made of
IEEE multiplications and additions only and are the same to the bit on every machine; the values
were recorded from the sampler code of main at d9264b2 on this seed."""
import pytest
import torch

from pylth.ddpm import GaussianDiffusion

PINNED = {
    ("ddpm", 10, 0.0): [-0.912881076335907, -0.7340829968452454, 0.13487163186073303, 0.6761348843574524,
                        -0.4615115523338318, 1.0, -1.0, -0.9441918134689331, -0.6379469037055969,
                        -0.9071542620658875, -0.38212060928344727, 0.47949591279029846],
    ("ddpm", None, 0.0): [-0.9187204241752625, -0.77107834815979, 0.01721177063882351, 0.7364046573638916,
                          -0.25558748841285706, 0.6430647969245911, -0.8385075926780701, -0.9905540943145752,
                          -0.9636999368667603, -0.9932882189750671, 0.2562852203845978, 0.33688560128211975],
    ("ddim", 10, 0.0): [-0.6015311479568481, -0.75211101770401, -0.692736029624939, 0.8220388889312744,
                        -0.2441554069519043, 0.9780787229537964, -0.9816722273826599, -0.9610464572906494,
                        0.7740391492843628, -0.9760158061981201, -0.6923452019691467, 0.8529884815216064],
    ("ddim", 7, 0.5): [-1.0, -0.8648813962936401, -0.2719471752643585, 0.7588659524917603, -0.4556194543838501,
                       0.8792529702186584, -0.8651201128959656, -1.0, 0.8032863140106201, -0.08255700021982193,
                       -0.8564716577529907, 0.7730135321617126],
}


class Polynomial(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x, t):
        return self.w * x - 0.05 * x * x * x + 1e-4 * t.float().view(-1, 1, 1, 1)


@pytest.mark.parametrize("sampler, steps, eta", sorted(PINNED, key=str))
def test_samples_are_the_pinned_values(sampler, steps, eta):
    samples = GaussianDiffusion(100).sample(Polynomial(), 3, (1, 2, 2), sampler=sampler, steps=steps, eta=eta,
                                            seed=5, batch_size=2, progress=False)
    assert torch.equal(samples.flatten(), torch.tensor(PINNED[sampler, steps, eta], dtype=torch.float32))
