"""Registration of FIBER-Shapes, the synthetic benchmark written by `tools/make_shapes_dataset.py`.

`register_fiber_shapes(root, prefix)` registers, for each split in train / val / novel:

| name | file under `root/annotations/` (images `root/images/{split}/`) | evaluator_type |
|---|---|---|
| `{prefix}_{split}` | `instances_{split}.json` (categories = shapes) | coco |
| `{prefix}_colorshape_{split}` | `instances_colorshape_{split}.json` (categories = "colour shape") | coco |
| `{prefix}_grounding_{split}` | `final_mixed_{split}.json` | (none) |
| `{prefix}_flickr_{split}` | `final_flickr_separateGT_{split}.json` | flickr30k |
| `{prefix}_flickr_merged_{split}` | `final_flickr_mergedGT_{split}.json` | flickr30k |
| `{prefix}_flickr_entities_{split}` | `root/flickr30k_entities/` (raw Flickr30k Entities) | flickr30k |
| `{prefix}_refexp_{split}` | `final_refexp_{split}.json` | refexp |
| `{prefix}_pairs_{split}` | `dataset_fiber_shapes.json`, that split's records | retrieval |
| `{prefix}_vqa_{split}` | `vqa_questions_{split}.json` + `vqa_annotations_{split}.json` | vqa |

`file_name` in the COCO/MDETR files is relative to `images/{split}/`; a Karpathy record's `filepath`
(`images/{split}`) is relative to `root`. The detection sets' `thing_classes` come from their JSON's categories:
read at registration when the file exists (a small file), otherwise set when the dataset is loaded.
"""
from __future__ import annotations

import logging
import os

from detectron2.data import MetadataCatalog

from .detection import coco_category_metadata, register_coco_detection
from .errors import DatasetFormatError, check_on_bad_record
from .flickr30k_entities import register_flickr30k_entities
from .image_text_pairs import register_karpathy_json
from .mdetr import register_mdetr_json
from .vqa import register_vqa

logger = logging.getLogger(__name__)

FIBER_SHAPES_SPLITS = ("train", "val", "novel")


def register_fiber_shapes(root: str, prefix: str = "fiber_shapes", on_bad_record: str = "raise") -> list[str]:
    """Register every FIBER-Shapes split x task under `root` (see the module docstring); returns the names.

    Nothing needs to exist yet: a missing file is reported when its dataset is loaded.
    """
    check_on_bad_record(on_bad_record)
    annotations = os.path.join(root, "annotations")
    entities_root = os.path.join(root, "flickr30k_entities")
    names = []
    for split in FIBER_SHAPES_SPLITS:
        image_root = os.path.join(root, "images", split)
        for task, file_stem in (("", "instances"), ("_colorshape", "instances_colorshape")):
            name = f"{prefix}{task}_{split}"
            json_file = os.path.join(annotations, f"{file_stem}_{split}.json")
            register_coco_detection(name, json_file, image_root, _categories_if_present(json_file, name),
                                    on_bad_record)
            names.append(name)

        name = f"{prefix}_grounding_{split}"
        register_mdetr_json(name, os.path.join(annotations, f"final_mixed_{split}.json"), image_root, on_bad_record)
        names.append(name)
        for task, gt in (("flickr", "separateGT"), ("flickr_merged", "mergedGT")):
            name = f"{prefix}_{task}_{split}"
            register_mdetr_json(
                name,
                os.path.join(annotations, f"final_flickr_{gt}_{split}.json"),
                image_root,
                on_bad_record,
                evaluator_type="flickr30k",
                flickr30k_entities_root=entities_root,
                split=split,
                merged_gt=gt == "mergedGT",
            )
            names.append(name)
        name = f"{prefix}_flickr_entities_{split}"
        register_flickr30k_entities(name, entities_root, image_root, split, on_bad_record)
        names.append(name)
        name = f"{prefix}_refexp_{split}"
        register_mdetr_json(
            name, os.path.join(annotations, f"final_refexp_{split}.json"), image_root, on_bad_record,
            evaluator_type="refexp",
        )
        names.append(name)

        name = f"{prefix}_pairs_{split}"
        register_karpathy_json(name, os.path.join(annotations, "dataset_fiber_shapes.json"), root, (split,))
        # The objects of each image, for CaptionEvaluator's check that captions name only objects present.
        MetadataCatalog.get(name).set(colorshape_json=os.path.join(annotations, f"instances_colorshape_{split}.json"))
        names.append(name)
        name = f"{prefix}_vqa_{split}"
        register_vqa(
            name,
            os.path.join(annotations, f"vqa_questions_{split}.json"),
            os.path.join(annotations, f"vqa_annotations_{split}.json"),
            image_root,
            "{image_id:06d}.jpg",
        )
        names.append(name)
    return names


def _categories_if_present(json_file: str, dataset_name: str) -> dict:
    """The file's `thing_classes` metadata if it exists and reads; else {} (the load will report the problem)."""
    if not os.path.isfile(json_file):
        return {}
    try:
        return coco_category_metadata(json_file, dataset_name)
    except (DatasetFormatError, OSError) as e:
        logger.warning("Registered %r without thing_classes: %s", dataset_name, e)
        return {}
