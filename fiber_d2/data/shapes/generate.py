"""Generate the FIBER-Shapes dataset (layout and formats: docs/DATA_FORMATS.md).

Every image gets its own random streams derived from (seed, split, index), so a seed fixes every byte of the output,
and an image does not depend on how many images other splits have. The dataset is written to a temporary folder that
replaces `root` only when complete; `meta.json` is written last.
"""
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..tokenizer import train_roberta_bpe_tokenizer
from . import writers
from .scenes import IMAGE_SIDE, Scene, sample_scene
from .text import ImageText, describe_scene
from .vocabulary import (
    BACKGROUNDS, COLOURS, SHAPES, SIZES, Combination, all_combinations, choose_heldout_combinations, colorshape_id,
    colorshape_name,
)

GENERATOR_VERSION = 1  # bump whenever the output for a given seed changes
SPLITS = ("train", "val", "novel")
JPEG_QUALITY = 90
TOKENIZER_VOCAB_SIZE = 1000
_HELDOUT_STREAM, _IMAGE_STREAM = 0, 1  # first words after the seed of the random streams


@dataclass(frozen=True)
class GenerationReport:
    """What `generate_fiber_shapes` did: `skipped` when `root` already held the same dataset; `seconds` of wall time."""

    root: Path
    meta: dict
    skipped: bool
    seconds: float


def generation_params(seed: int, num_train: int, num_val: int, num_novel: int) -> dict:
    """The parameters that fix a dataset's content (stored as meta.json's "params")."""
    return {"version": GENERATOR_VERSION, "seed": seed,
            "num_images": {"train": num_train, "val": num_val, "novel": num_novel}}


def heldout_combinations(seed: int) -> List[Combination]:
    """The (colour, shape) combinations of the novel split for a seed: never in train or val."""
    return choose_heldout_combinations(np.random.default_rng([seed, _HELDOUT_STREAM]))


def load_complete_meta(root: Union[str, os.PathLike]) -> Optional[dict]:
    """meta.json of a complete dataset at `root` (annotation files present, image counts as recorded), else None."""
    root = Path(root)
    try:
        meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
        for split, count in meta["params"]["num_images"].items():
            if len(list((root / "images" / split).glob("*.jpg"))) != count:
                return None
            if not (root / "annotations" / f"final_refexp_{split}.json").is_file():
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return meta


def _image_rngs(seed: int, split_index: int, index: int) -> Tuple[np.random.Generator, np.random.Generator]:
    """Independent (scene, text) random streams of one image."""
    sequence = np.random.SeedSequence([seed, _IMAGE_STREAM, split_index, index])
    return tuple(np.random.default_rng(child) for child in sequence.spawn(2))


def _jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _split_images(
    seed: int, split: str, count: int, first_id: int, heldout: Sequence[Combination]
) -> Iterator[Tuple[Scene, np.ndarray, ImageText]]:
    """(scene, H x W x 3 uint8 picture, texts) of each image of one split; train/val avoid `heldout`, novel images
    each contain one."""
    novel = split == "novel"
    allowed = all_combinations() if novel else [c for c in all_combinations() if c not in heldout]
    for index in range(count):
        scene_rng, text_rng = _image_rngs(seed, SPLITS.index(split), index)
        required = heldout[int(scene_rng.integers(len(heldout)))] if novel else None
        scene, image = sample_scene(scene_rng, first_id + index, allowed, required)
        yield scene, image, describe_scene(scene, text_rng, allowed)


def _generate_split(
    root: Path, seed: int, split: str, count: int, first_id: int, heldout: Sequence[Combination]
) -> Tuple[List[Scene], List[ImageText]]:
    """Draw, save and describe the images of one split."""
    folder = root / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    scenes, texts = [], []
    for scene, image, text in _split_images(seed, split, count, first_id, heldout):
        (folder / writers.image_file_name(scene.image_id)).write_bytes(_jpeg_bytes(image))
        scenes.append(scene)
        texts.append(text)
    return scenes, texts


def load_split_scenes(root: Union[str, os.PathLike], split: str) -> Tuple[List[Scene], List[ImageText]]:
    """The scenes and texts of one split of the dataset at `root`, regenerated from its meta.json parameters (the
    annotation files do not keep sizes or backgrounds). Raises ValueError for an incomplete dataset, an unknown split
    or a meta.json of another GENERATOR_VERSION."""
    meta = load_complete_meta(root)
    if meta is None:
        raise ValueError(f"{root}: no complete FIBER-Shapes dataset (meta.json missing or images incomplete)")
    params = meta["params"]
    if params.get("version") != GENERATOR_VERSION:
        raise ValueError(f"{root}/meta.json: generator version {params.get('version')}, this code writes "
                         f"{GENERATOR_VERSION}; regenerate the dataset")
    if split not in SPLITS:
        raise ValueError(f"unknown FIBER-Shapes split {split!r}; expected one of {SPLITS}")
    counts = params["num_images"]
    first_id = 1 + sum(counts[name] for name in SPLITS[: SPLITS.index(split)])
    generated = _split_images(params["seed"], split, counts[split], first_id, heldout_combinations(params["seed"]))
    scenes, texts = [], []
    for scene, _, text in generated:
        scenes.append(scene)
        texts.append(text)
    return scenes, texts


def _all_text(texts: Sequence[ImageText]) -> Iterator[str]:
    """Every caption, sentence, expression, question and answer (the tokenizer's training text)."""
    for text in texts:
        yield from (caption.text for caption in text.captions)
        yield from (sentence.text for sentence in text.sentences)
        yield from (refexp.text for refexp in text.refexps)
        for question in text.questions:
            yield question.question
            yield question.answer


def _write_split_annotations(root: Path, split: str, scenes: Sequence[Scene], texts: Sequence[ImageText]) -> None:
    """Write one split's COCO, MDETR, VQA and Flickr30k Entities files."""
    annotations = root / "annotations"
    files = {
        f"instances_{split}.json": writers.coco_detection(scenes, colorshape=False),
        f"instances_colorshape_{split}.json": writers.coco_detection(scenes, colorshape=True),
        f"final_mixed_{split}.json": writers.mdetr_grounding(scenes, texts),
        f"final_flickr_separateGT_{split}.json": writers.mdetr_flickr(scenes, texts, merged=False),
        f"final_flickr_mergedGT_{split}.json": writers.mdetr_flickr(scenes, texts, merged=True),
        f"final_refexp_{split}.json": writers.mdetr_refexp(scenes, texts),
    }
    files[f"vqa_questions_{split}.json"], files[f"vqa_annotations_{split}.json"] = writers.vqa(scenes, texts, split)
    for name, data in files.items():
        writers.write_json(annotations / name, data)
    writers.write_flickr_entities(root / "flickr30k_entities", split, scenes, texts)


def _split_summary(scenes: Sequence[Scene], texts: Sequence[ImageText]) -> dict:
    return {
        "images": len(scenes),
        "first_image_id": scenes[0].image_id if scenes else None,
        "objects": sum(len(scene.objects) for scene in scenes),
        "grounded_captions": sum(len(text.captions) for text in texts),
        "entity_sentences": sum(len(text.sentences) for text in texts),
        "referring_expressions": sum(len(text.refexps) for text in texts),
        "questions": sum(len(text.questions) for text in texts),
    }


def _write_dataset(root: Path, params: dict) -> dict:
    """Write every file of the dataset under `root`; returns the meta (written last, as meta.json)."""
    seed, counts = params["seed"], params["num_images"]
    heldout = heldout_combinations(seed)
    splits: Dict[str, Tuple[List[Scene], List[ImageText]]] = {}
    first_id = 1
    for split in SPLITS:
        splits[split] = _generate_split(root, seed, split, counts[split], first_id, heldout)
        _write_split_annotations(root, split, *splits[split])
        first_id += counts[split]
    writers.write_json(root / "annotations" / "dataset_fiber_shapes.json", writers.karpathy_captions(splits))
    all_texts = [text for _, texts in splits.values() for text in texts]
    tokenizer_dir = train_roberta_bpe_tokenizer(_all_text(all_texts), root / "tokenizer", TOKENIZER_VOCAB_SIZE)
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    meta = {
        "name": "FIBER-Shapes",
        "params": params,
        "splits": {split: _split_summary(*splits[split]) for split in SPLITS},
        "shapes": list(SHAPES),
        "colours": {name: list(rgb) for name, rgb in COLOURS.items()},
        "sizes_circumradius_px": {name: list(bounds) for name, bounds in SIZES.items()},
        "image_side_px": list(IMAGE_SIDE),
        "backgrounds": list(BACKGROUNDS),
        "heldout_combinations": [
            {"colour": colour, "shape": shape, "name": colorshape_name(colour, shape),
             "colorshape_id": colorshape_id(colour, shape)}
            for colour, shape in heldout
        ],
        "tokenizer_vocab_size": len(vocab),
    }
    writers.write_json(root / "meta.json", meta, indent=2)
    return meta


def generate_fiber_shapes(
    root: Union[str, os.PathLike],
    seed: int = 0,
    num_train: int = 1000,
    num_val: int = 200,
    num_novel: int = 200,
    force: bool = False,
) -> GenerationReport:
    """Generate FIBER-Shapes at `root` and return a report.

    Skips the work when `root` already holds a complete dataset with the same parameters (unless `force`). Otherwise
    writes into a sibling temporary folder and swaps it in at the end, replacing an older FIBER-Shapes dataset at
    `root`; refuses (FileExistsError) to replace a non-empty folder without meta.json.
    """
    start = time.perf_counter()
    root = Path(root)
    params = generation_params(seed, num_train, num_val, num_novel)
    existing = load_complete_meta(root)
    if existing is not None and existing.get("params") == params and not force:
        return GenerationReport(root, existing, True, time.perf_counter() - start)
    if root.exists() and any(root.iterdir()) and not (root / "meta.json").exists():
        raise FileExistsError(f"{root} is not empty and holds no FIBER-Shapes meta.json; not replacing it")
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        meta = _write_dataset(partial, params)
        if root.exists():
            old = root.parent / f".{root.name}.old-{os.getpid()}"
            root.rename(old)
            partial.rename(root)
            shutil.rmtree(old)
        else:
            partial.rename(root)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return GenerationReport(root, meta, False, time.perf_counter() - start)
