"""pylth.pruning.magnitude_masks / global_magnitude_masks: the public face of the selection kernel."""
import numpy as np
import pytest
import torch
from torch import nn

from pylth.pruning import global_magnitude_masks, magnitude_masks


def test_magnitude_masks_prune_the_smallest_per_tensor():
    w = [torch.tensor([[0.5, -3.0], [0.1, 2.0]]), torch.tensor([1.0, -1.0, 0.2, 4.0, -0.3])]
    got = magnitude_masks(w, [0.5, 0.4])
    assert got[0].tolist() == [[False, True], [False, True]]
    assert got[1].tolist() == [True, True, False, True, False]


def test_existing_masks_only_shrink_and_count_active_entries():
    gen = torch.Generator().manual_seed(0)
    w = [torch.randn(50, 20, generator=gen)]
    m = [torch.rand(50, 20, generator=gen) < 0.4]
    (new,) = magnitude_masks(w, [0.25], m)
    assert not (new & ~m[0]).any()
    active = int(m[0].sum())
    assert int(new.sum()) == active - int(np.floor(0.25 * active + 0.5))
    kept_mag = w[0].abs()[new]
    pruned_mag = w[0].abs()[m[0] & ~new]
    assert kept_mag.min() >= pruned_mag.max()


def test_parameters_and_low_precision_weights_are_accepted():
    layer = nn.Linear(6, 4).to(torch.bfloat16)
    (got,) = magnitude_masks([layer.weight], [0.5])
    assert got.shape == (4, 6) and int(got.sum()) == 12


def test_global_ranks_across_tensors():
    w = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 10.0])]
    got = global_magnitude_masks(w, 0.4)
    assert got[0].tolist() == [False, True, True] and got[1].tolist() == [False, True]


def test_bad_input():
    with pytest.raises(TypeError, match="weights"):
        magnitude_masks(torch.randn(3), [0.5])
    with pytest.raises(ValueError, match="ratios"):
        magnitude_masks([torch.randn(3)], [0.5, 0.5])
    with pytest.raises(ValueError, match="ratio"):
        global_magnitude_masks([torch.randn(3)], 2.0)
