"""Tickets that are small and fast, not only counted as sparse.

    sparse = sparsify(model, masks)        # masked Conv2d/Linear -> sparse modules; sparse.sparsify_report
    train = sparsify(model, masks, trainable=True)    # kept values as Parameters: train with any optimizer
    model.load_state_dict(dense_state_dict(train))    # back to the dense masked model (model.pt's format)

``SparseConv2d``/``SparseLinear`` hold only the kept weights and run pylth's sparse kernels
(pylth.ops.sparse_conv); where the dense op is faster a layer stays dense (see ``convert``). The
ticket file, whose size follows the kept weights and which loads back sparsified, is pylth.tickets.
"""
from pylth.sparse.convert import (CONV_MAX_DENSITY, LINEAR_MAX_DENSITY, LINEAR_MIN_WEIGHTS, SparsifyReport,
                                  dense_layer_masks, dense_state_dict, load_dense_state_, sparsify)
from pylth.sparse.modules import SparseConv2d, SparseLinear

__all__ = ["CONV_MAX_DENSITY", "LINEAR_MAX_DENSITY", "LINEAR_MIN_WEIGHTS", "SparseConv2d", "SparseLinear",
           "SparsifyReport", "dense_layer_masks", "dense_state_dict", "load_dense_state_", "sparsify"]
