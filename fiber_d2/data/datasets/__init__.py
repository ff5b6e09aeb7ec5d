"""Dataset loaders (one module per file format) and their registration in Detectron2's catalogs.

Importing this package registers the real datasets under `$DETECTRON2_DATASETS` (names in `builtin.py`) and
FIBER-Shapes (names in `fiber_shapes.py`). Output layouts: docs/DATA_FORMATS.md.
"""
from .builtin import register_all_fiber_datasets
from .catalog import register_dataset
from .coco_captions import load_coco_captions_json, register_coco_captions
from .detection import (
    coco_category_metadata,
    load_coco_detection_json,
    load_lvis_detection_json,
    register_coco_detection,
    register_lvis_detection,
)
from .errors import DatasetFormatError
from .fiber_shapes import FIBER_SHAPES_SPLITS, register_fiber_shapes
from .flickr30k_entities import load_flickr30k_entities, parse_entities_sentence, register_flickr30k_entities
from .image_text_pairs import load_jsonl_pairs, load_karpathy_json, register_jsonl_pairs, register_karpathy_json
from .mdetr import load_mdetr_json, register_mdetr_json
from .vqa import load_vqa_json, register_vqa

__all__ = [
    "DatasetFormatError",
    "FIBER_SHAPES_SPLITS",
    "coco_category_metadata",
    "load_coco_captions_json",
    "load_coco_detection_json",
    "load_flickr30k_entities",
    "load_jsonl_pairs",
    "load_karpathy_json",
    "load_lvis_detection_json",
    "load_mdetr_json",
    "load_vqa_json",
    "parse_entities_sentence",
    "register_all_fiber_datasets",
    "register_coco_captions",
    "register_coco_detection",
    "register_dataset",
    "register_fiber_shapes",
    "register_flickr30k_entities",
    "register_jsonl_pairs",
    "register_karpathy_json",
    "register_lvis_detection",
    "register_mdetr_json",
    "register_vqa",
]
