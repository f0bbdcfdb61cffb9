"""The round loop's torch.distributed helpers: rank 0 decides and writes, the others receive.

They live in pylth.distributed (shared with pylth.train and the ddpm trainer and FID); this module
keeps the names the lottery imports."""
from pylth.distributed import (barrier, broadcast_object, broadcast_tensors, is_distributed,  # noqa: F401
                               is_local_main, is_main, masks_checksum, shutdown, verify_same_on_all_ranks)
