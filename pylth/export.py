"""python -m pylth.export RUN [--round K] --to diffusers OUT: a ticket as a diffusers DDPMPipeline.

OUT is a new folder that ``diffusers.DDPMPipeline.from_pretrained(OUT)`` loads: the round's trained,
masked EMA weights as a UNet2DModel (safetensors) and a DDPMScheduler with the run's betas.
Needs huggingface diffusers (``pip install ".[diffusers]"``).
"""
from __future__ import annotations

import argparse
import sys

from pylth.cli import ArgumentParser, run_command
from pylth.lottery.export import FORMATS, export_ticket


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m pylth.export", description=__doc__.splitlines()[0])
    parser.add_argument("run", metavar="RUN", help="find_ticket run directory")
    parser.add_argument("out", metavar="OUT", help="the folder to write (must not exist, or be empty)")
    parser.add_argument("--round", type=int, default=None, metavar="K",
                        help="round to export (default: the last finished round)")
    parser.add_argument("--to", choices=FORMATS, default="diffusers", help="format (default: diffusers)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body(_environment) -> None:  # reads no data, cache or weights
        about = export_ticket(args.run, args.out, round=args.round, to=args.to)
        fid = f", FID {about['fid']:.3f} ({about['fid_features']} features)" if about.get("fid") is not None else ""
        print(f"wrote {about['out']}: round {about['round']} of {about['run']} ({about['model_kind']}, sparsity "
              f"{100 * about['sparsity']:.2f}%{fid}); load it with diffusers.DDPMPipeline.from_pretrained")

    return run_command(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())
