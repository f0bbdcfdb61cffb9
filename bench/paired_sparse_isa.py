"""The convs of issue 29's sparse forward check (the whole forward: bench/paired_forward.py): every
distinct conv of the CIFAR-10 U-Net (bench/unet_layers.py, batch 8, uniform random masks, as
bench/test_bench_sparse.py) at 95 % and 99 %, torch's dense conv on the masked weight against pylth's
sparse conv on each CPU path, the calls of one layer alternating (dense, then pylth on each path, round
after round, in an order that rotates: paired_isa.measure) so that a machine whose speed drifts slows
all of them alike. Per layer the ratio dense / pylth from the minimum times; then the U-Net's convs
together, each shape weighted by its count, each layer taking the faster of dense and pylth (the
crossover rule of bench/unet_layers.unet_summary), per path.

    OMP_NUM_THREADS=1 python bench/paired_sparse_isa.py [--sparsities 0.95 0.99] [--rounds 10]
        [--cpu-isa avx512 avx2] [--layers]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import pylth
from pylth.ops import set_cpu_isa
from pylth.ops.sparse_conv import compress_weight, sparse_conv2d
from paired_isa import measure
from ratios import cpu_model
from unet_layers import layer_input_and_mask, layer_name, unet_layers

BATCH = 8


def layer_case(layer, sparsity: float):
    """(dense call, pylth call) of one conv shape at one sparsity; checks that they agree."""
    gen = torch.Generator().manual_seed(0)
    x, shape, mask = layer_input_and_mask(layer, BATCH, sparsity, gen)
    weight = torch.randn(shape, generator=gen) * mask
    bias = torch.randn(shape[0], generator=gen)
    sparse = compress_weight(weight, mask)
    _, _, _, _, s, p, _, _ = layer
    dense = lambda: F.conv2d(x, weight, bias, s, p)  # noqa: E731
    ours = lambda: sparse_conv2d(x, sparse, bias, s, p)  # noqa: E731
    torch.testing.assert_close(ours(), dense(), rtol=1e-4, atol=1e-3)
    return dense, ours


def main() -> None:
    supported = pylth.build_info()["cpu_isa_supported"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.95, 0.99])
    parser.add_argument("--cpu-isa", nargs="+", default=supported, choices=supported,
                        help="CPU paths to time pylth on (default: every path this CPU supports)")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds per layer (default 10)")
    parser.add_argument("--layers", action="store_true", help="print every layer's ratios too")
    parser.add_argument("--wall-time", action="store_true", help="time.perf_counter instead of time.process_time")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    timer = time.perf_counter if args.wall_time else time.process_time
    print(f"CPU: {cpu_model()}; paths this CPU supports: {', '.join(supported)}; torch threads "
          f"{torch.get_num_threads()}; {'wall' if args.wall_time else 'CPU'} time; batch {BATCH}; min of "
          f"{args.rounds} rounds")
    start_path = pylth.build_info()["cpu_isa"]
    convs = {layer: count for layer, count in unet_layers().items() if layer[0] == "conv"}
    with torch.no_grad():
        for sparsity in args.sparsities:
            dense_total = 0.0
            totals = {path: 0.0 for path in args.cpu_isa}
            for layer, count in convs.items():
                times = measure(*layer_case(layer, sparsity), args.cpu_isa, args.rounds, timer)
                best = {name: min(t) for name, t in times.items()}
                dense_total += count * best[None]
                for path in args.cpu_isa:
                    totals[path] += count * min(best[None], best[path])
                if args.layers:
                    cells = ", ".join(f"{path} {best[None] / best[path]:.2f}x" for path in args.cpu_isa)
                    print(f"  {layer_name(layer)} (x{count}) at {sparsity:.0%}: dense {best[None] * 1e3:.3f} ms; "
                          f"dense / pylth: {cells}", flush=True)
            cells = "; ".join(f"{path} {totals[path] * 1e3:.1f} ms: {dense_total / totals[path]:.2f}x"
                              for path in args.cpu_isa)
            print(f"all convs of the U-Net at {sparsity:.0%} (count-weighted, faster of dense and pylth per layer): "
                  f"dense {dense_total * 1e3:.1f} ms; {cells}", flush=True)
    set_cpu_isa(start_path)


if __name__ == "__main__":
    main()
