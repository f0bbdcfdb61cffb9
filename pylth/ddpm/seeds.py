"""Seeds derived from a run's seed, one per draw (a training iteration, a block of samples)."""
from __future__ import annotations

import numpy as np


def derived_seed(seed: int, index: int) -> int:
    """The seed of draw ``index`` of a run seeded ``seed``: distinct for distinct pairs, unlike
    seed + index, and a valid torch seed."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> 1)
