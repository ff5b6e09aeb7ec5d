"""Image captioning: CIDEr-D as coco-caption computes it (`CiderD` after its PTB tokenizer), over a dataset's
reference captions.

`CaptionEvaluator` tokenises candidates and references as coco-caption does (`ptb_tokenize`: "man's" -> "man 's",
hyphenated words kept whole, punctuation dropped), then scores the tokens with `cider_d`.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from typing import Any, Mapping, Sequence

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.file_io import PathManager

from .distributed import gather_unique
from .ptb_tokenizer import ptb_tokenize
from .records import captions_by_image_id
from .shapes_captions import load_colorshape_objects, shapes_caption_scores

logger = logging.getLogger(__name__)

MAX_N = 4
CIDER_SIGMA = 6.0

NGram = tuple[str, ...]


def cider_d(
    candidates: Mapping[Any, str], references: Mapping[Any, Sequence[str]], sigma: float = CIDER_SIGMA
) -> tuple[float, dict[Any, float]]:
    """CIDEr-D of one tokenised candidate caption per image (words separated by whitespace, e.g. `ptb_tokenize`'s
    output): `(corpus score, {image_id: score})`, the corpus score being the mean of the per-image scores. Values are
    on coco-caption's native scale (10 x a mean cosine, a good COCO model scores about 1.2); papers print them x100.

    Each image is scored against `references[image_id]` (every key of `candidates` needs one or more references).
    N-grams are n = 1..4; a sentence's vector for each n holds tf x idf, idf = log(#images evaluated) - log(max(1,
    #images whose references contain the n-gram)), counted over the evaluated images only (so a single-image corpus
    scores 0). Per reference and n: the candidate's values clipped by the reference's, dotted with the reference's,
    over the product of both norms, times the length penalty exp(-(#candidate words - #reference words)^2 /
    (2 sigma^2)). The image's score is 10 x the mean over n and references. No candidate: (NaN, {}).
    """
    if not candidates:
        return float("nan"), {}
    for image_id in candidates:
        if not references.get(image_id):
            raise ValueError(f"cider_d: image_id {image_id!r} has a candidate but no reference caption")
    candidate_counts = {image_id: _ngram_counts(caption) for image_id, caption in candidates.items()}
    reference_counts = {image_id: [_ngram_counts(ref) for ref in references[image_id]] for image_id in candidates}
    document_frequency: Counter = Counter()
    for counts in reference_counts.values():
        document_frequency.update(set().union(*(c.keys() for c, _ in counts)))
    log_num_images = math.log(len(candidates))

    def tf_idf(counts: Counter) -> tuple[list[dict[NGram, float]], list[float]]:
        vectors: list[dict[NGram, float]] = [{} for _ in range(MAX_N)]
        for ngram, count in counts.items():
            vectors[len(ngram) - 1][ngram] = count * (log_num_images - math.log(max(1, document_frequency[ngram])))
        return vectors, [math.sqrt(sum(value * value for value in vector.values())) for vector in vectors]

    scores = {}
    for image_id, (counts, length) in candidate_counts.items():
        vectors, norms = tf_idf(counts)
        total = 0.0
        for ref_counts, ref_length in reference_counts[image_id]:
            ref_vectors, ref_norms = tf_idf(ref_counts)
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * sigma**2))
            total += penalty * sum(map(_clipped_cosine, vectors, norms, ref_vectors, ref_norms))
        scores[image_id] = 10.0 * total / (MAX_N * len(reference_counts[image_id]))
    return sum(scores.values()) / len(scores), scores


def _clipped_cosine(vector: dict[NGram, float], norm: float, ref_vector: dict[NGram, float], ref_norm: float) -> float:
    """sum over the candidate's n-grams of min(candidate, reference) x reference, over both norms (0 if one is 0)."""
    if not (norm and ref_norm):
        return 0.0
    dot = 0.0
    for ngram, value in vector.items():
        ref_value = ref_vector.get(ngram, 0.0)
        dot += min(value, ref_value) * ref_value
    return dot / (norm * ref_norm)


def _ngram_counts(caption: str) -> tuple[Counter, int]:
    """The counts of the tokenised caption's n-grams (n = 1..MAX_N, as word tuples) and its number of words."""
    words = caption.split()
    counts = Counter(tuple(words[i : i + n]) for n in range(1, MAX_N + 1) for i in range(len(words) - n + 1))
    return counts, len(words)


class CaptionEvaluator(DatasetEvaluator):
    """CIDEr-D (`cider_d`, native scale) of generated captions against the `captions` of the dataset's records, both
    tokenised by `ptb_tokenize` (references in dataset order, image by image; candidates in the same image order).

    `process()` takes outputs `{"image_id", "caption": str}`. `evaluate()` returns `{"caption": {"CIDEr": value}}`
    over the images captioned by any process (an image captioned twice counts once; the idf is over those images).
    With `output_dir`, the captions go to `caption_predictions.json` as COCO results `[{"image_id", "caption"}]`.
    When the dataset's metadata names a FIBER-Shapes `colorshape_json`, the metrics also hold `shapes_caption_scores`
    (the share of captions that name only colour-shape pairs present in the image).
    """

    predictions_file = "caption_predictions.json"

    def __init__(self, dataset_name: str, output_dir: str | None = None) -> None:
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._references: dict[Any, list[str]] | None = None
        self._captions: dict[Any, str] = {}

    def reset(self) -> None:
        self._captions = {}

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Keep each output's caption under its image_id."""
        for outputs_i in outputs:
            image_id, caption = outputs_i["image_id"], outputs_i["caption"]
            if image_id not in self._reference_captions():
                raise KeyError(f"image_id {image_id!r} is not a record of dataset {self._dataset_name!r}")
            if not isinstance(caption, str):
                raise TypeError(
                    f"dataset {self._dataset_name!r}, image_id {image_id!r}: the caption must be a str, got "
                    f"{type(caption).__name__}"
                )
            self._captions[image_id] = caption

    def evaluate(self) -> dict[str, dict[str, float]]:
        """`{"caption": {"CIDEr": value}}` on the main process, over the images any process captioned; {} elsewhere."""
        captions = gather_unique(self._captions)
        if captions is None:
            return {}
        if not captions:
            logger.warning("CaptionEvaluator on %r: no image was captioned", self._dataset_name)
            return {}
        references = self._reference_captions()
        unseen = len(references) - len(captions)
        if unseen:
            logger.warning(
                "CaptionEvaluator: %d of %d images of %r were never captioned; the metrics cover the %d captioned",
                unseen, len(references), self._dataset_name, len(captions),
            )
        if self._output_dir:
            self._dump(captions)
        for image_id in captions:
            if not references[image_id]:
                raise ValueError(f"dataset {self._dataset_name!r}, image_id {image_id!r}: the record has no caption")
        image_ids = [image_id for image_id in references if image_id in captions]  # dataset order
        tokenized = dict(zip(image_ids, ptb_tokenize([captions[image_id] for image_id in image_ids])))
        tokenized_references = iter(ptb_tokenize([ref for image_id in image_ids for ref in references[image_id]]))
        cider, _ = cider_d(
            tokenized, {image_id: [next(tokenized_references) for _ in references[image_id]] for image_id in image_ids}
        )
        logger.info("CaptionEvaluator on %r (%d images): CIDEr-D %.4f", self._dataset_name, len(captions), cider)
        metrics = {"CIDEr": cider}
        colorshape_json = MetadataCatalog.get(self._dataset_name).get("colorshape_json", None)
        if colorshape_json:  # FIBER-Shapes: do the captions name only objects that are in the image?
            metrics.update(shapes_caption_scores(captions, load_colorshape_objects(colorshape_json)))
        return {"caption": metrics}

    def _reference_captions(self) -> dict[Any, list[str]]:
        if self._references is None:
            self._references = captions_by_image_id(self._dataset_name, type(self).__name__)
        return self._references

    def _dump(self, captions: dict[Any, str]) -> None:
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, self.predictions_file)
        with PathManager.open(path, "w") as f:
            json.dump([{"image_id": image_id, "caption": captions[image_id]} for image_id in sorted(captions)], f)
        logger.info("Wrote the captions as COCO results to %s", path)
