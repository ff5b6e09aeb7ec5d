#!/usr/bin/env python
"""Convert an official FIBER checkpoint to fiber_d2's parameter names (a .pth that DetectionCheckpointer loads).

    python tools/convert_fiber_checkpoint.py fiber_coarse_then_fine.pth output/fiber_fine_d2.pth
    python tools/convert_fiber_checkpoint.py fiber_coarse_then_fine.pth output/fiber_fine_ema_d2.pth --ema
    python tools/convert_fiber_checkpoint.py fiber_pretrain.ckpt output/fiber_coarse_d2.pth --stage coarse

Reads the file without executing pickled code: PyTorch's weights_only allow-list, with inert stand-ins for other
classes the file names (Lightning/sacred hyper-parameter containers); the weights must be tensors. Takes `model` (fine; `model_ema` with --ema) or the
Lightning `state_dict` (coarse), renames it with the table in fiber_d2/checkpoint/fiber_official.py and prints what
was converted, dropped on purpose and left unmapped. Nothing is written while a key is unmapped, unless
--allow-partial (exit code 2 otherwise). The output holds tensors only: {"model": ..., "__author__": ...}.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch

from fiber_d2.checkpoint.fiber_official import ConversionReport, convert_official_state_dict
from fiber_d2.checkpoint.io import CheckpointLayoutError, describe_keys, load_checkpoint_file

PROG = "convert_fiber_checkpoint.py"
AUTHOR = "fiber_d2 convert_fiber_checkpoint"
EXIT_ERROR = 1
EXIT_UNMAPPED = 2


class ConversionError(Exception):
    """An error reported to the user as one line."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """INPUT OUTPUT [--stage fine|coarse|auto] [--ema] [--allow-partial]."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=formatter)
    parser.add_argument(
        "input", metavar="INPUT", help="official checkpoint (.pth from the fine stage, .ckpt from the coarse stage)"
    )
    parser.add_argument("output", metavar="OUTPUT", help="converted checkpoint to write (.pth)")
    parser.add_argument(
        "--stage", choices=("fine", "coarse", "auto"), default="auto", help="official stage (default: from the keys)"
    )
    parser.add_argument("--ema", action="store_true", help="convert the `model_ema` weights instead of `model`")
    parser.add_argument(
        "--allow-partial", action="store_true", help="write the converted keys even when some keys have no rule"
    )
    return parser.parse_args(argv)


def select_state_dict(loaded: dict[str, Any], ema: bool) -> dict[str, torch.Tensor]:
    """The weights inside a loaded checkpoint: `model_ema` (ema), else `model`, Lightning `state_dict`, or the file
    itself when it is a bare state dict."""
    available = describe_keys(sorted(map(str, loaded)))
    if ema:
        if not isinstance(loaded.get("model_ema"), dict):
            raise ConversionError(f"--ema: the checkpoint has no 'model_ema' entry (top-level keys: {available})")
        state_dict = loaded["model_ema"]
    elif isinstance(loaded.get("model"), dict):
        state_dict = loaded["model"]
    elif isinstance(loaded.get("state_dict"), dict):
        state_dict = loaded["state_dict"]
    elif loaded and all(isinstance(value, torch.Tensor) for value in loaded.values()):
        state_dict = loaded
    else:
        raise ConversionError(
            f"the checkpoint has no 'model' or 'state_dict' entry and is not a state dict (top-level keys: {available})"
        )
    not_tensors = [str(key) for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ConversionError(f"the state dict holds non-tensor entries: {describe_keys(not_tensors)}")
    return state_dict


def print_report(report: ConversionReport, num_input: int) -> None:
    """Counts, every dropped group with an example key, and every unmapped key."""
    print(
        f"{report.stage} FIBER checkpoint: {num_input} tensors -> {len(report.state_dict)} converted, "
        f"{report.num_dropped} dropped on purpose, {len(report.unmapped)} unmapped"
    )
    for reason, keys in report.dropped.items():
        print(f"  dropped {len(keys):5d}  {reason} (e.g. {keys[0]})")
    for key in report.unmapped:
        print(f"  unmapped        {key}")


def write_atomically(state_dict: dict[str, torch.Tensor], path: str) -> None:
    """torch.save to a temporary file next to `path`, then os.replace: `path` is never left half written."""
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "xb") as file:
            torch.save({"model": state_dict, "__author__": AUTHOR}, file)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def convert(args: argparse.Namespace) -> int:
    """Check the paths, load, convert, report, write; the exit code (ConversionError etc. for one-line errors)."""
    if not args.output.endswith(".pth"):
        raise ConversionError(f"OUTPUT {args.output!r} must end in .pth (Detectron2 reads other suffixes differently)")
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise ConversionError(f"the folder of OUTPUT, {folder!r}, does not exist")
    if os.path.exists(args.output) and os.path.exists(args.input) and os.path.samefile(args.input, args.output):
        raise ConversionError(f"OUTPUT {args.output!r} is INPUT; refusing to overwrite the official checkpoint")
    state_dict = select_state_dict(load_checkpoint_file(args.input, stand_in_unknown_globals=True), args.ema)
    report = convert_official_state_dict(state_dict, stage=args.stage)
    print_report(report, len(state_dict))
    if report.unmapped and not args.allow_partial:
        print(
            f"{PROG}: error: {len(report.unmapped)} keys have no conversion rule (first: "
            f"{describe_keys(report.unmapped, limit=3)}); nothing written (--allow-partial writes the rest)",
            file=sys.stderr,
        )
        return EXIT_UNMAPPED
    write_atomically(report.state_dict, args.output)
    print(f"wrote {len(report.state_dict)} tensors to {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return convert(args)
    except (ConversionError, CheckpointLayoutError, FileNotFoundError) as error:
        message = str(error)
    except Exception as error:  # anything else still ends in one line, never a traceback
        message = f"{type(error).__name__}: {error}"
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
