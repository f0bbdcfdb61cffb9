"""Tickets that are small and fast, not only counted as sparse.

    sparse = sparsify(model, masks)        # masked Conv2d/Linear -> sparse modules; sparse.sparsify_report
    save_sparse("ticket.safetensors", model, masks)   # a file that scales with the kept weights
    model = load_sparse("ticket.safetensors")         # sparsified again (dense=True: the masked model)
    train = sparsify(model, masks, trainable=True)    # kept values as Parameters: train with any optimizer
    model.load_state_dict(dense_state_dict(train))    # back to the dense masked model (model.pt's format)

``SparseConv2d``/``SparseLinear`` hold only the kept weights and run pylth's sparse kernels
(pylth.ops.sparse_conv); where the dense op is faster a layer stays dense (see ``convert``).
"""
from pylth.sparse.convert import (CONV_MAX_DENSITY, LINEAR_MAX_DENSITY, LINEAR_MIN_WEIGHTS, SparsifyReport,
                                  dense_layer_masks, dense_state_dict, load_dense_state_, sparsify)
from pylth.sparse.io import SparseTicket, load_sparse, read_sparse, save_sparse
from pylth.sparse.modules import SparseConv2d, SparseLinear

__all__ = ["CONV_MAX_DENSITY", "LINEAR_MAX_DENSITY", "LINEAR_MIN_WEIGHTS", "SparseConv2d", "SparseLinear",
           "SparseTicket", "SparsifyReport", "dense_layer_masks", "dense_state_dict", "load_dense_state_", "load_sparse",
           "read_sparse", "save_sparse", "sparsify"]
