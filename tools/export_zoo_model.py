#!/usr/bin/env python
"""Write a trained checkpoint's model weights as a model-zoo file (safetensors, floating tensors in fp16 by default)
and record it in fiber_d2/model_zoo/manifest.json.

    python tools/export_zoo_model.py output/zoo/grounding/model_final.pth \\
        --config fiber_shapes/zoo/grounding.yaml --output model_zoo/fiber_shapes/grounding.safetensors

Loads go through fiber_d2.checkpoint.io (no pickled code runs). Prints the file's size and sha256.

The tokenizer the model was trained with (MODEL.FIBER.TOKENIZER of the training run's config.yaml next to the
checkpoint, or `--tokenizer`; FIBER-Shapes trains its tokenizer on its own captions, so another generated dataset has
other token ids) is copied to a `tokenizer` folder next to the weights, which the zoo's FIBER-Shapes models share, and
recorded in the manifest, so that `model_zoo.get_config(..., trained=True)` sets MODEL.FIBER.TOKENIZER to it.

A VQA model's answer classes are defined by its training data (MODEL.FIBER.VQA.ANSWER_VOCABULARY "": the answers of
DATASETS.TRAIN). `--answer-vocabulary` writes them, as the config gives them on this machine ($DETECTRON2_DATASETS
must hold the training data), next to the weights as <output stem>_answers.json and records that file in the
manifest, so that `model_zoo.get_config(..., trained=True)` sets MODEL.FIBER.VQA.ANSWER_VOCABULARY to it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "fiber_d2" / "model_zoo" / "manifest.json"
ZOO_ROOT = REPO / "model_zoo"
MAX_BYTES = 10 * 1024 * 1024


def training_tokenizer(checkpoint: Path) -> str:
    """MODEL.FIBER.TOKENIZER of the training run's config.yaml (Detectron2 writes it to OUTPUT_DIR, next to the
    checkpoints), with command-line overrides applied; "" when there is none."""
    import yaml

    config = checkpoint.parent / "config.yaml"
    if not config.is_file():
        return ""
    with open(config, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    return str(values.get("MODEL", {}).get("FIBER", {}).get("TOKENIZER", "") or "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a Detectron2 checkpoint (.pth) or .safetensors file")
    parser.add_argument("--config", required=True, help="the config it was trained with, relative to configs/")
    parser.add_argument("--output", required=True, help="where to write, under model_zoo/")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16", help="floating tensors' dtype")
    parser.add_argument("--answer-vocabulary", action="store_true",
                        help="also ship the VQA answer classes the config's training data defines")
    parser.add_argument("--tokenizer", default="",
                        help="the tokenizer directory the model was trained with (default: MODEL.FIBER.TOKENIZER of "
                             "the config.yaml next to the checkpoint)")
    args = parser.parse_args(argv)
    from fiber_d2.data.tokenizer import resolve_path
    from fiber_d2.model_zoo import list_models, sha256_of, write_manifest
    from fiber_d2.model_zoo.export import export_answer_vocabulary, export_tokenizer, export_weights

    output = Path(args.output).resolve()
    try:
        relative = output.relative_to(ZOO_ROOT)
    except ValueError:
        parser.error(f"--output must lie under {ZOO_ROOT}")
    if not (REPO / "configs" / args.config).is_file():
        parser.error(f"--config {args.config!r} is not a file under configs/")
    tokenizer = args.tokenizer or training_tokenizer(Path(args.checkpoint))
    if not tokenizer:
        parser.error(f"no config.yaml with MODEL.FIBER.TOKENIZER next to {args.checkpoint}: give --tokenizer")
    try:
        size = export_weights(args.checkpoint, output, args.dtype)
    except (OSError, ValueError) as error:
        sys.exit(f"export_zoo_model.py: error: {error}")
    if size > MAX_BYTES:
        output.unlink()
        sys.exit(f"export_zoo_model.py: error: {output} would be {size / 2**20:.1f} MiB, above the zoo's 10 MiB")

    digest = sha256_of(output)
    # a new file's metrics are measured again (tools/zoo_demo.py --record)
    entry = {"file": relative.as_posix(), "sha256": digest, "bytes": size}
    print(f"{relative.as_posix()}: {size} bytes ({size / 2**20:.2f} MiB), sha256 {digest}")
    tokenizer_dir = output.parent / "tokenizer"
    try:
        digests = export_tokenizer(resolve_path(tokenizer), tokenizer_dir)
    except (OSError, ValueError) as error:
        output.unlink()
        sys.exit(f"export_zoo_model.py: error: {error}")
    tokenizer_entry = {"file": tokenizer_dir.relative_to(ZOO_ROOT).as_posix(), "sha256": digests}
    entry["files"] = {"MODEL.FIBER.TOKENIZER": tokenizer_entry}
    print(f"{tokenizer_dir.relative_to(ZOO_ROOT).as_posix()}: the tokenizer of {tokenizer} (MODEL.FIBER.TOKENIZER)")
    if args.answer_vocabulary:
        answers = output.with_name(output.stem + "_answers.json")
        try:
            count = export_answer_vocabulary(args.config, output, answers)
        except (OSError, ValueError) as error:
            sys.exit(f"export_zoo_model.py: error: {error}")
        key = "MODEL.FIBER.VQA.ANSWER_VOCABULARY"
        entry["files"][key] = {"file": answers.relative_to(ZOO_ROOT).as_posix(), "sha256": sha256_of(answers)}
        print(f"{answers.relative_to(ZOO_ROOT).as_posix()}: {count} answer classes ({key})")
    manifest = list_models(MANIFEST) if MANIFEST.is_file() else {}
    manifest[args.config] = entry
    write_manifest(manifest, MANIFEST)
    return 0


if __name__ == "__main__":
    sys.exit(main())
