#!/usr/bin/env python
"""fiber_d2 benchmarks: one subcommand per benchmark, each printing one JSON object per line on stdout (logs: stderr).

    python tools/benchmark.py backbone          # FIBER-B at 384x384 (text 40) and 800x1333 (text 256)
    python tools/benchmark.py dcn               # the DyHead's 3x3 DCNv2 at P3-P7 of 800x1333, 256 channels
    python tools/benchmark.py lvis --num-chunks 3 --repeats 1   # FIBER-B at 800x1333, LVIS names in chunks of 40
    python tools/benchmark.py throughput        # FIBER-tiny grounding detector: images/s in batches of 1 and 4
    python tools/benchmark.py latency           # FIBER-tiny vs Grounding DINO of the same size, fp32 and bf16
    python tools/benchmark.py launches          # operators, kernels and host reads per FIBER-tiny forward
    python tools/benchmark.py train             # FIBER-tiny training step on FIBER-Shapes, with and without loading
    python tools/benchmark.py checkouts --baseline /tmp/base   # that step against another checkout (e.g. a commit)

The benchmarks live in fiber_d2/benchmark/ (one module each); docs/BENCHMARKS.md describes their rows.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from typing import Sequence

from fiber_d2.benchmark import backbone, checkouts, dcn, launches, latency, lvis, throughput, train
from fiber_d2.benchmark.common import BenchmarkError
from fiber_d2.config import ConfigError
from fiber_d2.data import PromptError
from fiber_d2.data.datasets import DatasetFormatError
from fiber_d2.data.image_io import ImageError
from fiber_d2.engine.cli import error_line

PROG = "benchmark.py"
# Bad input (options, config, dataset files): one line naming what and where, no traceback.
ONE_LINE_ERRORS = (BenchmarkError, ConfigError, FileNotFoundError, DatasetFormatError, ImageError, PromptError)
MODULES = (backbone, dcn, lvis, throughput, latency, launches, train, checkouts)
BENCHMARKS = {module.__name__.rsplit(".", 1)[-1]: module for module in MODULES}


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per benchmark module, with its options."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(BENCHMARKS) + "}")
    for name, module in BENCHMARKS.items():
        subparser = commands.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(subparser)
        subparser.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark; its rows go to stdout as JSON lines. Exit status 2 and one line for a bad config."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s", force=True)
    stdout = sys.stdout

    def emit(row: dict) -> None:  # rows go to the real stdout; everything else printed meanwhile goes to stderr
        stdout.write(json.dumps(row) + "\n")
        stdout.flush()

    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            args.run(args, emit)
    except ONE_LINE_ERRORS as error:
        print(f"{PROG}: error: {error_line(error)}", file=sys.stderr)
        return 2
    logging.getLogger("fiber_d2.benchmark").info("done in %.1f s", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
