"""Registration of the real datasets fiber_d2 reads, under `$DETECTRON2_DATASETS` (default `./datasets`), on import.

Detectron2 itself registers COCO (`coco_2017_train`, `coco_2017_val`, ...) and LVIS (`lvis_v1_train`, `lvis_v1_val`);
those are used as they are. Registered here, as `name [evaluator_type]: annotations -> images` (paths relative to the
root; nothing is read until a dataset is loaded):

Detection
- `lvis_v1_minival` [lvis]: `coco/annotations/lvis_v1_minival_inserted_image_name.json` -> `coco/{split of coco_url}/`
- `objects365_v2_{train,val}` [coco]: `objects365/zhiyuan_objv2_{split}.json` -> `objects365/{split}/`

Grounding (MDETR annotations, `mdetr_annotations/`)
- `mdetr_mixed_train` [none]: `final_mixed_train_no_coco.json` -> by the record's `data_source`: "vg" `gqa/images/`,
  "coco" `coco/train2014/` (or by its `dataset_name`: "gqa", "flickr" `flickr30k/flickr30k_images/`)
- `flickr30k_grounding_separate_{train,val,test}` [flickr30k]: `final_flickr_separateGT_{split}.json`
  -> `flickr30k/flickr30k_images/`
- `flickr30k_grounding_merged_{train,val,test}` [flickr30k]: `final_flickr_mergedGT_{split}.json`
  -> `flickr30k/flickr30k_images/`
- `refcoco_{train,val,testA,testB}`, `refcoco+_{train,val,testA,testB}`, `refcocog_{train,val,test}` [refexp]:
  `final_{dataset}_{split}.json` -> `coco/train2014/`
- `flickr30k_entities_{train,val,test}` [flickr30k]: raw Flickr30k Entities `flickr30k/flickr30k_entities/`
  -> `flickr30k/flickr30k_images/`

Image-text pairs
- `coco_2017_captions_{train,val}` [caption]: `coco/annotations/captions_{split}2017.json` -> `coco/{split}2017/`
- `coco_karpathy_{train,val,test}` [retrieval]: `coco/karpathy/dataset_coco.json` -> `coco/{filepath}/`;
  train = Karpathy's train + restval
- `flickr30k_karpathy_{train,val,test}` [retrieval]: `flickr30k/karpathy/dataset_flickr30k.json`
  -> `flickr30k/flickr30k_images/`
- `cc3m_{train,val}`, `sbu_train`, `vg_captions_train` [retrieval]: JSON lines `cc3m/cc3m_{split}.jsonl`,
  `sbu/sbu_train.jsonl`, `vg/vg_captions_train.jsonl` -> `cc3m/`, `sbu/`, `vg/`

VQA
- `vqav2_{train,val}` [vqa]: `coco/vqa/v2_OpenEnded_mscoco_{split}2014_questions.json` +
  `coco/vqa/v2_mscoco_{split}2014_annotations.json` -> `coco/{split}2014/COCO_{split}2014_{image_id:012d}.jpg`

The Flickr30k grounding sets' metadata also hold `flickr30k_entities_root`, `split` and `merged_gt` for their
evaluator. FIBER-Shapes (`fiber_shapes_*`, root `fiber_shapes/`) is registered too; see `fiber_shapes.py`.
"""
from __future__ import annotations

import os

from .coco_captions import register_coco_captions
from .detection import register_coco_detection, register_lvis_detection
from .errors import check_on_bad_record
from .fiber_shapes import register_fiber_shapes
from .flickr30k_entities import register_flickr30k_entities
from .image_text_pairs import register_jsonl_pairs, register_karpathy_json
from .mdetr import register_mdetr_json
from .vqa import register_vqa

_FLICKR_IMAGES = "flickr30k/flickr30k_images"
_FLICKR_ENTITIES = "flickr30k/flickr30k_entities"
_FLICKR_SPLITS = ("train", "val", "test")
# MDETR's mixed files name each record's image source in `data_source` ("coco" / "vg": GQA's images are Visual
# Genome's); a record's `dataset_name` is the key for files without it.
_MIXED_IMAGE_ROOTS = {"vg": "gqa/images", "gqa": "gqa/images", "coco": "coco/train2014", "flickr": _FLICKR_IMAGES}
_REFEXP_SPLITS = {
    "refcoco": ("train", "val", "testA", "testB"),
    "refcoco+": ("train", "val", "testA", "testB"),
    "refcocog": ("train", "val", "test"),
}
# name: (Karpathy file, image root, splits)
_KARPATHY = {
    "coco_karpathy_train": ("coco/karpathy/dataset_coco.json", "coco", ("train", "restval")),
    "coco_karpathy_val": ("coco/karpathy/dataset_coco.json", "coco", ("val",)),
    "coco_karpathy_test": ("coco/karpathy/dataset_coco.json", "coco", ("test",)),
    **{
        f"flickr30k_karpathy_{split}": ("flickr30k/karpathy/dataset_flickr30k.json", _FLICKR_IMAGES, (split,))
        for split in _FLICKR_SPLITS
    },
}
# name: (JSON lines file, image root)
_JSONL_PAIRS = {
    "cc3m_train": ("cc3m/cc3m_train.jsonl", "cc3m"),
    "cc3m_val": ("cc3m/cc3m_val.jsonl", "cc3m"),
    "sbu_train": ("sbu/sbu_train.jsonl", "sbu"),
    "vg_captions_train": ("vg/vg_captions_train.jsonl", "vg"),
}


def register_all_fiber_datasets(root: str, on_bad_record: str = "raise") -> None:
    """Register every dataset of the module docstring, and FIBER-Shapes, with paths under `root`.

    Calling it again (e.g. with another root) replaces the earlier registrations. `on_bad_record` ("raise" or
    "skip") applies to the loaders that check boxes and spans.
    """
    check_on_bad_record(on_bad_record)

    def path(relative: str) -> str:
        return os.path.join(root, relative)

    register_lvis_detection(
        "lvis_v1_minival", path("coco/annotations/lvis_v1_minival_inserted_image_name.json"), path("coco/"),
        on_bad_record,
    )
    for split in ("train", "val"):
        register_coco_detection(
            f"objects365_v2_{split}", path(f"objects365/zhiyuan_objv2_{split}.json"), path(f"objects365/{split}"),
            on_bad_record=on_bad_record,
        )
        register_coco_captions(
            f"coco_2017_captions_{split}", path(f"coco/annotations/captions_{split}2017.json"),
            path(f"coco/{split}2017"), on_bad_record,
        )
        register_vqa(
            f"vqav2_{split}",
            path(f"coco/vqa/v2_OpenEnded_mscoco_{split}2014_questions.json"),
            path(f"coco/vqa/v2_mscoco_{split}2014_annotations.json"),
            path(f"coco/{split}2014"),
            f"COCO_{split}2014_{{image_id:012d}}.jpg",
        )

    register_mdetr_json(
        "mdetr_mixed_train",
        path("mdetr_annotations/final_mixed_train_no_coco.json"),
        {source: path(folder) for source, folder in _MIXED_IMAGE_ROOTS.items()},
        on_bad_record,
    )
    for split in _FLICKR_SPLITS:
        for protocol, gt in (("separate", "separateGT"), ("merged", "mergedGT")):
            register_mdetr_json(
                f"flickr30k_grounding_{protocol}_{split}",
                path(f"mdetr_annotations/final_flickr_{gt}_{split}.json"),
                path(_FLICKR_IMAGES),
                on_bad_record,
                evaluator_type="flickr30k",
                flickr30k_entities_root=path(_FLICKR_ENTITIES),
                split=split,
                merged_gt=gt == "mergedGT",
            )
        register_flickr30k_entities(
            f"flickr30k_entities_{split}", path(_FLICKR_ENTITIES), path(_FLICKR_IMAGES), split, on_bad_record
        )
    for dataset, splits in _REFEXP_SPLITS.items():
        for split in splits:
            register_mdetr_json(
                f"{dataset}_{split}",
                path(f"mdetr_annotations/final_{dataset}_{split}.json"),
                path("coco/train2014"),
                on_bad_record,
                evaluator_type="refexp",
            )

    for name, (json_file, image_root, splits) in _KARPATHY.items():
        register_karpathy_json(name, path(json_file), path(image_root), splits)
    for name, (jsonl_file, image_root) in _JSONL_PAIRS.items():
        register_jsonl_pairs(name, path(jsonl_file), path(image_root))

    register_fiber_shapes(path("fiber_shapes"), on_bad_record=on_bad_record)


# Registered on import, as detectron2.data.datasets.builtin does.
def default_root() -> str:
    """Where the datasets are: $DETECTRON2_DATASETS, default `datasets` (Detectron2's convention)."""
    return os.getenv("DETECTRON2_DATASETS", "datasets")


register_all_fiber_datasets(default_root())
