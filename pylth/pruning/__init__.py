"""Pruning: exact magnitude masks, U-Net module groups, Algorithm 1's strategies, sparsity, MACs.

    masks = compute_masks(model, "layerwise", prune_ratio=0.2, increment=0.01, masks=masks)
    report = sparsity_report(masks, module_groups(model, list(masks)))
    macs, dense = count_macs(model, (1, 3, 32, 32), masks)
"""
from pylth.pruning.groups import module_groups, prunable_parameters
from pylth.pruning.macs import count_macs
from pylth.pruning.masks import global_magnitude_masks, magnitude_masks
from pylth.pruning.model_masks import apply_masks, check_masked_zero, checked_masks
from pylth.pruning.report import sparsity_report
from pylth.pruning.strategies import STRATEGIES, compute_masks, layerwise_ratios

__all__ = [
    "STRATEGIES",
    "apply_masks",
    "check_masked_zero",
    "checked_masks",
    "compute_masks",
    "count_macs",
    "global_magnitude_masks",
    "layerwise_ratios",
    "magnitude_masks",
    "module_groups",
    "prunable_parameters",
    "sparsity_report",
]
