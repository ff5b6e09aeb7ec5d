"""Datasets named in the config: DATASETS.REGISTER_COCO's (name, json_file, image_root) triples are registered as
COCO-format detection datasets (`register_coco_detection`, evaluator_type "coco"), which the grounding detector reads
with its category names as prompts, so a new dataset needs no code. DATASETS.ON_BAD_RECORD "skip" also re-registers
the built-in datasets so that their loaders skip bad records."""
from __future__ import annotations

from detectron2.config import CfgNode

from ...config import ConfigError
from ..tokenizer import resolve_path
from .builtin import default_root, register_all_fiber_datasets
from .detection import register_coco_detection


def register_datasets_from_config(cfg: CfgNode) -> list[str]:
    """Register DATASETS.REGISTER_COCO (paths may use $DETECTRON2_DATASETS, expanded); returns the names registered.

    Nothing is read until a dataset is loaded; a malformed triple raises ConfigError naming it.
    """
    if cfg.DATASETS.ON_BAD_RECORD != "raise":  # the import-time registrations raise on bad records
        register_all_fiber_datasets(default_root(), cfg.DATASETS.ON_BAD_RECORD)
    names = []
    for index, entry in enumerate(cfg.DATASETS.REGISTER_COCO):
        if not isinstance(entry, (list, tuple)) or len(entry) != 3 or not all(isinstance(x, str) and x for x in entry):
            raise ConfigError(
                f"DATASETS.REGISTER_COCO[{index}] must be [name, json_file, image_root] (3 non-empty strings), "
                f"got {entry!r}"
            )
        name, json_file, image_root = entry
        if name in names:
            raise ConfigError(f"DATASETS.REGISTER_COCO names {name!r} twice")
        register_coco_detection(
            name, resolve_path(json_file), resolve_path(image_root), on_bad_record=cfg.DATASETS.ON_BAD_RECORD
        )
        names.append(name)
    return names
