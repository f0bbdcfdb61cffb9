"""The trainer under torch.distributed: two CPU processes with gloo train one model (DDP,
DistributedSampler), rank 0 alone writes the checkpoint, and the same call resumes from it."""
import subprocess
import sys

import pytest
import torch

from pylth.io import torch_load

WORKER = r'''
import os, sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

def work(rank, out, iterations):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from pylth.ddpm import GaussianDiffusion, build_model
    from pylth.ddpm.data import load_dataset
    from pylth.ddpm.trainer import TrainConfig, train
    torch.manual_seed(0)  # same initial model on both ranks
    model = build_model("digits", ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0)
    masks = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) > 0.5
             for n, p in model.named_parameters() if p.ndim > 1}
    config = TrainConfig(iterations=iterations, batch_size=16, warmup=0, checkpoint_every=2)
    seen = []
    result = train(model, GaussianDiffusion(), load_dataset("digits"), config, masks=masks,
                   checkpoint_path=os.path.join(out, "ckpt.pt"), on_iteration=lambda it, m: seen.append(it))
    flat = torch.cat([p.detach().flatten() for p in result.model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        torch.save(dict(same=bool(torch.equal(gathered[0], gathered[1])), iterations=result.iterations, seen=seen,
                        zeros=all(bool((p[~masks[n]] == 0).all()) for n, p in result.model.named_parameters()
                                  if n in masks)),
                   os.path.join(out, f"result{iterations}.pt"))
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(work, args=(sys.argv[1], int(sys.argv[2])), nprocs=2)
'''


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.slow  # two spawned processes importing torch: about a minute on a busy 2-core box
def test_two_process_gloo_training_stays_in_sync_and_resumes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    for iterations in (2, 4):
        proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(iterations), _free_port()],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = torch_load(str(tmp_path / f"result{iterations}.pt"))
        # the second call resumes at the first call's checkpoint: iterations 3 and 4 only
        assert result == dict(same=True, iterations=iterations, seen=[iterations - 1, iterations], zeros=True)
        ckpt = torch_load(str(tmp_path / "ckpt.pt"))
        assert ckpt["iteration"] == iterations and len(ckpt["rng"]) == 2
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
