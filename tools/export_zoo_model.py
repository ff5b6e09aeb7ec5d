#!/usr/bin/env python
"""Write a trained checkpoint's model weights as a model-zoo file (safetensors, floating tensors in fp16 by default)
and record it in fiber_d2/model_zoo/manifest.json.

    python tools/export_zoo_model.py output/zoo/grounding/model_final.pth \\
        --config fiber_shapes/zoo/grounding.yaml --output model_zoo/fiber_shapes/grounding.safetensors

Loads go through fiber_d2.checkpoint.io (no pickled code runs). Prints the file's size and sha256.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "fiber_d2" / "model_zoo" / "manifest.json"
ZOO_ROOT = REPO / "model_zoo"
MAX_BYTES = 10 * 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a Detectron2 checkpoint (.pth) or .safetensors file")
    parser.add_argument("--config", required=True, help="the config it was trained with, relative to configs/")
    parser.add_argument("--output", required=True, help="where to write, under model_zoo/")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16", help="floating tensors' dtype")
    args = parser.parse_args(argv)
    from fiber_d2.model_zoo import list_models, sha256_of, write_manifest
    from fiber_d2.model_zoo.export import export_weights

    output = Path(args.output).resolve()
    try:
        relative = output.relative_to(ZOO_ROOT)
    except ValueError:
        parser.error(f"--output must lie under {ZOO_ROOT}")
    if not (REPO / "configs" / args.config).is_file():
        parser.error(f"--config {args.config!r} is not a file under configs/")
    try:
        size = export_weights(args.checkpoint, output, args.dtype)
    except (OSError, ValueError) as error:
        sys.exit(f"export_zoo_model.py: error: {error}")
    if size > MAX_BYTES:
        output.unlink()
        sys.exit(f"export_zoo_model.py: error: {output} would be {size / 2**20:.1f} MiB, above the zoo's 10 MiB")

    digest = sha256_of(output)
    manifest = list_models(MANIFEST) if MANIFEST.is_file() else {}
    # a new file's metrics are measured again (tools/zoo_demo.py --record)
    manifest[args.config] = {"file": relative.as_posix(), "sha256": digest, "bytes": size}
    write_manifest(manifest, MANIFEST)
    print(f"{relative.as_posix()}: {size} bytes ({size / 2**20:.2f} MiB), sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
