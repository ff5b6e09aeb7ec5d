"""COCO AP50 with categories merged into groups: where a detector's AP is lost.

For FIBER-Shapes' colour+shape categories ("red circle"), merging by colour gives the AP a detector would have if it
only had to get the colour right, merging by shape the same for the shape, and merging everything the class-agnostic
AP (boxes alone). Detections keep their boxes and scores and take their category's group; two detections of one box
whose categories fall in the same group stay two detections (the lower-scored one counts as a false positive), as
they would for a detector that predicted the merged categories itself. Uses pycocotools' COCOeval (bbox, area "all",
100 detections per image).
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Callable, Sequence

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

ALL_IN_ONE = "object"


def merged_category_ap50(coco_gt: dict, detections: Sequence[dict], group_of: Callable[[str], str]) -> float:
    """AP at IoU 0.5, in percent, with each category replaced by group_of(its name).

    coco_gt: a COCO instances dict (images, annotations, categories); detections: COCO results
    ({"image_id", "category_id", "bbox" [x, y, w, h], "score"}). A detection whose category is not in `coco_gt` is an
    error naming it. NaN when no group has a ground-truth box.
    """
    names = {category["id"]: category["name"] for category in coco_gt["categories"]}
    unknown = sorted({d["category_id"] for d in detections} - set(names))
    if unknown:
        raise KeyError(f"detections name category ids {unknown[:5]} that the annotations do not define")
    groups = sorted({group_of(name) for name in names.values()})
    group_id = {group: index + 1 for index, group in enumerate(groups)}
    new_id = {category_id: group_id[group_of(name)] for category_id, name in names.items()}

    merged_gt = copy.deepcopy(coco_gt)
    merged_gt["categories"] = [{"id": index, "name": group} for group, index in group_id.items()]
    for annotation in merged_gt["annotations"]:
        annotation["category_id"] = new_id[annotation["category_id"]]
    merged_detections = [{**d, "category_id": new_id[d["category_id"]]} for d in detections]
    if not merged_detections:
        return 0.0 if merged_gt["annotations"] else float("nan")

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = merged_gt
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(merged_detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    ap50 = evaluation.stats[1]
    return float("nan") if ap50 < 0 else 100.0 * float(ap50)


def colour_shape_breakdown(coco_gt: dict, detections: Sequence[dict]) -> dict[str, float]:
    """FIBER-Shapes' "<colour> <shape>" categories -> {"AP50", "AP50_colour", "AP50_shape", "AP50_class_agnostic"}."""
    return {
        "AP50": merged_category_ap50(coco_gt, detections, lambda name: name),
        "AP50_colour": merged_category_ap50(coco_gt, detections, lambda name: name.split()[0]),
        "AP50_shape": merged_category_ap50(coco_gt, detections, lambda name: name.split()[-1]),
        "AP50_class_agnostic": merged_category_ap50(coco_gt, detections, lambda name: ALL_IN_ONE),
    }
