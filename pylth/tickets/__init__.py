"""A round's ticket in the formats it is written in: pylth's safetensors file, whose size follows the
kept weights (``file``), and a diffusers DDPMPipeline folder (``diffusers_pipeline``)."""
from pylth.tickets.file import SparseTicket, load_sparse, read_sparse, save_sparse

__all__ = ["SparseTicket", "load_sparse", "read_sparse", "save_sparse"]
