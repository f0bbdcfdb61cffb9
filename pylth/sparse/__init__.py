"""Tickets that are small and fast, not only counted as sparse.

    sparse = sparsify(model, masks)        # masked Conv2d/Linear -> sparse modules; sparse.sparsify_report
    save_sparse("ticket.safetensors", model, masks)   # a file that scales with the kept weights
    model = load_sparse("ticket.safetensors")         # sparsified again (dense=True: the masked model)

``SparseConv2d``/``SparseLinear`` hold only the kept weights and run pylth's sparse kernels
(pylth.ops.sparse_conv); where the dense op is faster a layer stays dense (see ``convert``).
"""
from pylth.sparse.convert import CONV_MAX_DENSITY, LINEAR_MAX_DENSITY, LINEAR_MIN_WEIGHTS, SparsifyReport, sparsify
from pylth.sparse.io import SparseTicket, load_sparse, read_sparse, save_sparse
from pylth.sparse.modules import SparseConv2d, SparseLinear

__all__ = ["CONV_MAX_DENSITY", "LINEAR_MAX_DENSITY", "LINEAR_MIN_WEIGHTS", "SparseConv2d", "SparseLinear",
           "SparseTicket", "SparsifyReport", "load_sparse", "read_sparse", "save_sparse", "sparsify"]
