"""The masked trainer: loss falls, masked weights stay exactly zero, resume replays the same run."""
import os

import pytest
import torch

from pylth.ddpm import GaussianDiffusion, build_model
from pylth.ddpm.data import load_dataset
from pylth.ddpm.trainer import TrainConfig, train
from pylth.ddpm.trainer import sparse as trainer_sparse
from pylth.foundations.io import torch_load
from pylth.sparse import dense_state_dict

TINY = dict(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=())


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def held_out_loss(model, diffusion, dataset):
    g = torch.Generator().manual_seed(123)
    x0 = dataset.images[:256].float() / 127.5 - 1.0
    t = torch.randint(0, diffusion.num_timesteps, (256,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        return diffusion.loss(model.eval(), x0, t=t, noise=noise).item()


def test_short_digits_run_lowers_the_loss(digits):
    torch.manual_seed(0)
    model, diffusion = build_model("digits", **TINY), GaussianDiffusion()
    before = held_out_loss(model, diffusion, digits)
    result = train(model, diffusion, digits, TrainConfig(iterations=80, batch_size=32, lr=2e-3, warmup=10))
    assert result.iterations == 80
    after = held_out_loss(result.model, diffusion, digits)
    assert after < 0.6 * before, (before, after)
    assert result.loss < 0.9


def random_masks(model, sparsity, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) >= sparsity
            for n, p in model.named_parameters() if p.ndim > 1}


@pytest.mark.parametrize("sparse_training", ["off", "auto"])
def test_masked_training_keeps_pruned_weights_exactly_zero_after_every_step(digits, sparse_training):
    torch.manual_seed(1)
    model = build_model("digits", **TINY)
    masks = random_masks(model, 0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # every entry non-zero before training
    checked = []

    def check(iteration, m):
        params = dense_state_dict(m)  # the trained module: sparse layers under auto at 90 %
        assert all(bool((params[n][~mk] == 0).all()) for n, mk in masks.items())
        assert all(bool((params[n][mk] != 0).any()) for n, mk in masks.items())
        checked.append(iteration)
        assert (m is model) == (sparse_training == "off")

    config = TrainConfig(iterations=5, batch_size=16, warmup=0, sparse_training=sparse_training)
    result = train(model, GaussianDiffusion(), digits, config, masks=masks, on_iteration=check)
    assert result.model is model
    assert checked == [1, 2, 3, 4, 5]
    ema = dict(result.ema_model.named_parameters())
    assert all(bool((ema[n][~mk] == 0).all()) for n, mk in masks.items())
    with pytest.raises(ValueError, match="not a parameter"):
        train(model, GaussianDiffusion(), digits, TrainConfig(iterations=1), masks={"nope": masks[next(iter(masks))]})
    for end in (-1, "5", 2.0):
        with pytest.raises(ValueError, match="end_iteration"):
            train(model, GaussianDiffusion(), digits, TrainConfig(iterations=1), end_iteration=end)


def same_start(seed: int, sparsity: float, mask_seed: int):
    """(a factory of tiny U-Nets that all start from the same weights, random masks for them)."""
    torch.manual_seed(seed)
    init = build_model("digits", **TINY).state_dict()
    masks = random_masks(build_model("digits", **TINY), sparsity, seed=mask_seed)

    def fresh():
        model = build_model("digits", **TINY)
        model.load_state_dict(init)
        return model
    return fresh, masks


@pytest.mark.parametrize("sparse_training", ["off", "on"])
def test_resume_from_checkpoint_replays_the_uninterrupted_run(digits, tmp_path, sparse_training):
    config = TrainConfig(iterations=6, batch_size=16, warmup=3, checkpoint_every=3, seed=5,
                         sparse_training=sparse_training)
    fresh, masks = same_start(seed=2, sparsity=0.5, mask_seed=3)
    straight = train(fresh(), GaussianDiffusion(), digits, config, masks=masks)
    path = str(tmp_path / "ckpt.pt")
    first = train(fresh(), GaussianDiffusion(), digits, config, masks=masks, end_iteration=3, checkpoint_path=path)
    assert first.iterations == 3 and torch_load(path)["iteration"] == 3
    held = torch_load(path)
    compact = any(k.endswith(".values") for k in held["model"])
    assert compact == (sparse_training == "on") and compact == any(k.endswith(".values") for k in held["ema"])
    seen = []
    resumed = train(fresh(), GaussianDiffusion(), digits, config, masks=masks, checkpoint_path=path,
                    on_iteration=lambda it, m: seen.append(it))
    assert seen == [4, 5, 6] and resumed.iterations == 6 and os.path.exists(path)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    for a, b in zip(straight.ema_model.state_dict().values(), resumed.ema_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_an_auto_checkpoint_resumes_in_its_own_sparse_layers_when_auto_would_choose_others(digits, tmp_path,
                                                                                         monkeypatch):
    # auto chooses by the crossover constants and the device; a round checkpointed on one machine (or
    # pylth version) and resumed where auto chooses otherwise must go on in the checkpoint's layers
    config = TrainConfig(iterations=4, batch_size=16, warmup=0, checkpoint_every=2, seed=1, sparse_training="auto")
    fresh, masks = same_start(seed=3, sparsity=0.95, mask_seed=4)
    straight = train(fresh(), GaussianDiffusion(), digits, config, masks=masks)
    path = str(tmp_path / "ckpt.pt")
    train(fresh(), GaussianDiffusion(), digits, config, masks=masks, end_iteration=2, checkpoint_path=path)
    assert torch_load(path)["sparse_layers"], "auto made no layer sparse: the test needs some"
    real_sparsify = trainer_sparse.sparsify

    def where_the_crossover_is_zero(model, masks, *, max_density=None, **kwargs):  # auto keeps every layer dense
        return real_sparsify(model, masks, max_density=0.0 if max_density is None else max_density, **kwargs)

    monkeypatch.setattr(trainer_sparse, "sparsify", where_the_crossover_is_zero)
    resumed = train(fresh(), GaussianDiffusion(), digits, config, masks=masks, checkpoint_path=path)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_ema_starts_from_the_model_and_warms_up(digits):
    torch.manual_seed(4)
    model = build_model("digits", **TINY)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train(model, GaussianDiffusion(), digits, TrainConfig(iterations=1, batch_size=8, warmup=0))
    # One update with decay min(0.9999, 1/10): ema = 0.1 * start + 0.9 * model.
    for name, p in result.ema_model.named_parameters():
        expected = 0.1 * start[name] + 0.9 * dict(result.model.named_parameters())[name]
        torch.testing.assert_close(p, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("field,value", [("iterations", 0), ("batch_size", -1), ("lr", 0.0), ("ema_decay", 1.0),
                                         ("warmup", -1), ("device", "tpu"), ("sparse_training", "yes")])
def test_bad_train_config_raises_value_error_naming_the_field(field, value):
    kwargs = dict(iterations=10)
    kwargs[field] = value
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("field,value", [("lr", "2e-4"), ("grad_clip", None), ("ema_decay", "0.9"), ("device", None)])
def test_non_numeric_train_config_raises_type_error_naming_the_field(field, value):
    with pytest.raises(TypeError, match=field):
        TrainConfig(iterations=10, **{field: value})


@pytest.mark.parametrize("field,value,error", [("eta", "0", TypeError), ("sample_batch_size", 2.5, ValueError),
                                               ("sample_batch_size", "64", ValueError)])
def test_bad_eval_config_raises_naming_the_field(field, value, error):
    from pylth.evaluation.config import EvalConfig

    with pytest.raises(error, match=field):
        EvalConfig(**{field: value})


def test_sparse_training_matches_dense_masked_training_with_state_sized_by_the_kept_weights(digits, tmp_path):
    torch.manual_seed(4)
    init = build_model("digits", **TINY).state_dict()
    masks = random_masks(build_model("digits", **TINY), 0.9, seed=6)
    results, checkpoints = {}, {}
    for setting in ("off", "on"):
        model = build_model("digits", **TINY)
        model.load_state_dict(init)
        checkpoints[setting] = str(tmp_path / f"{setting}.pt")
        config = TrainConfig(iterations=8, batch_size=16, warmup=2, seed=1, sparse_training=setting)
        results[setting] = train(model, GaussianDiffusion(), digits, config, masks=masks,
                                 checkpoint_path=checkpoints[setting])
    assert results["on"].loss == pytest.approx(results["off"].loss, rel=1e-4)
    for which in ("model", "ema_model"):
        a, b = (getattr(results[s], which).state_dict() for s in ("off", "on"))
        assert list(a) == list(b)  # the dense masked format, whatever trained
        for name in masks:
            torch.testing.assert_close(b[name], a[name], rtol=0, atol=2e-4 * 8)  # a fraction of lr per step
            assert bool((b[name][~masks[name]] == 0).all())
    held = torch_load(checkpoints["on"])
    moments = [s["exp_avg"].numel() for s in held["optimizer"]["state"].values()]
    dense_moments = [s["exp_avg"].numel() for s in torch_load(checkpoints["off"])["optimizer"]["state"].values()]
    kept, pruned = sum(int(m.sum()) for m in masks.values()), sum(int((~m).sum()) for m in masks.values())
    assert sum(dense_moments) - sum(moments) == pruned and kept > 0  # no moment for a pruned weight
    assert held["config"]["sparse_training"] == "on" and held["sparse_layers"]
    # a checkpoint of one setting does not resume under another
    model = build_model("digits", **TINY)
    config = TrainConfig(iterations=8, batch_size=16, warmup=2, seed=1, sparse_training="off")
    with pytest.raises(ValueError, match=r"--sparse-training on \(\d+ layer\(s\) sparse\), this run has off \(0\)"):
        train(model, GaussianDiffusion(), digits, config, masks=masks, checkpoint_path=checkpoints["on"])
