"""Image-text retrieval: Recall@k both ways over a dataset's images and their captions, with optional ITM re-ranking.

Directions, as in ALBEF/FIBER: *image retrieval* (ir) ranks the images for each text (text-to-image), *text retrieval*
(tr) ranks the texts for each image (image-to-text), where an image is retrieved by any one of its captions.

Ties: a wrong item scoring exactly as high as the correct one is ranked ahead of it, i.e. the rank of a query's
correct item is 1 + the number of wrong items scoring >= it. This is the pessimistic rule; it does not depend on the
order of the items, and a collapsed model (all scores equal) gets recall ~0 rather than 100.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Sequence

import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from .distributed import gather_unique, score_in_shares
from .records import captions_by_image_id
from .ranking import TOP_K, hit_rate_at_k

logger = logging.getLogger(__name__)

PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ItmScorer = Callable[[list, list], torch.Tensor]


def retrieval_ranks(
    similarity: torch.Tensor, text_image: torch.Tensor, text_to_image: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks of the correct items under the module's tie rule: `(image_ranks [T], text_ranks [I])`.

    `similarity` [I, T] scores the texts of each image row (text retrieval); `text_to_image` [I, T] (default:
    `similarity`) scores the images of each text column (image retrieval). `text_image` [T] is the index of each
    text's image; every image needs at least one text. `image_ranks[t]` is the rank of text t's image among the images,
    `text_ranks[i]` the rank of image i's best-scored caption among the texts.
    """
    text_to_image = similarity if text_to_image is None else text_to_image
    _check_scores(similarity, text_image, text_to_image)
    num_images, num_texts = similarity.shape
    device = similarity.device
    texts = torch.arange(num_texts, device=device)

    correct = text_to_image[text_image, texts]  # [T]: each text's score with its own image
    image_ranks = (text_to_image >= correct).sum(dim=0)  # its own image counts itself: 1 + wrong images >= it

    own = similarity[text_image, texts]  # [T]
    best = torch.full((num_images,), float("-inf"), dtype=similarity.dtype, device=device).scatter_reduce(
        0, text_image, own, reduce="amax"
    )  # [I]: each image's best-scored caption
    at_least_best = (similarity >= best[:, None]).sum(dim=1)  # [I], including the image's captions tied with the best
    own_at_best = torch.zeros(num_images, dtype=torch.long, device=device).scatter_add(
        0, text_image, (own >= best[text_image]).long()
    )
    text_ranks = at_least_best - own_at_best + 1
    return image_ranks, text_ranks


def retrieval_recalls(
    similarity: torch.Tensor,
    text_image: torch.Tensor,
    ks: Sequence[int] = TOP_K,
    text_to_image: torch.Tensor | None = None,
) -> dict[str, float]:
    """Recall@k in percent: `ir_R@k` (text-to-image), `tr_R@k` (image-to-text) for each k, and `r_mean` (their mean).

    Arguments as in `retrieval_ranks`; a query counts at k when its rank (module tie rule) is <= k.
    """
    return _recalls(*retrieval_ranks(similarity, text_image, text_to_image), ks)


def _recalls(image_ranks: torch.Tensor, text_ranks: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    recalls = {f"ir_R@{k}": value for k, value in hit_rate_at_k(image_ranks.tolist(), ks).items()}
    recalls.update({f"tr_R@{k}": value for k, value in hit_rate_at_k(text_ranks.tolist(), ks).items()})
    recalls["r_mean"] = sum(recalls.values()) / len(recalls)
    return recalls


def rerank_top_k(similarity: torch.Tensor, k: int, scorer: PairScorer) -> tuple[torch.Tensor, torch.Tensor]:
    """ITM re-ranking of the top `k` candidates: `(image_to_text, text_to_image)`, both [I, T].

    `image_to_text` is `similarity` with each image row's top-k texts re-scored, `text_to_image` with each text
    column's top-k images re-scored (k is clipped to the number of texts / images; ties at the k-th place are broken
    by `torch.topk`). A candidate's new score is `scorer`'s probability plus one constant, `max(similarity) + 1 -
    min(probabilities)`, so candidates stay above every non-candidate and only the order inside the top k changes.
    `scorer(image_indices [P], text_indices [P]) -> [P]` is called once, on the union of both directions' candidate
    pairs, each pair once, sorted by (image, text); batch inside it as needed. Pass the result on as
    `retrieval_recalls(image_to_text, text_image, ks, text_to_image=text_to_image)`.
    """
    if k < 1:
        raise ValueError(f"rerank_top_k needs k >= 1, got {k}")
    num_images, num_texts = similarity.shape
    top_texts = similarity.topk(min(k, num_texts), dim=1).indices  # [I, k]
    top_images = similarity.topk(min(k, num_images), dim=0).indices  # [k, T]
    row_pairs = torch.arange(num_images, device=similarity.device)[:, None] * num_texts + top_texts
    column_pairs = top_images * num_texts + torch.arange(num_texts, device=similarity.device)[None, :]
    pairs, where = torch.unique(torch.cat([row_pairs.flatten(), column_pairs.flatten()]), return_inverse=True)
    image_indices, text_indices = pairs // num_texts, pairs % num_texts
    probabilities = torch.as_tensor(scorer(image_indices, text_indices)).to(similarity.device, similarity.dtype)
    if probabilities.shape != pairs.shape:
        raise ValueError(f"The ITM scorer returned shape {tuple(probabilities.shape)} for {len(pairs)} pairs")
    if not torch.isfinite(probabilities).all():
        raise ValueError("The ITM scorer returned non-finite scores")
    rescored = probabilities + (similarity.max() + 1 - probabilities.min())
    image_to_text = similarity.clone(memory_format=torch.contiguous_format)
    text_to_image = image_to_text.clone()
    image_to_text.view(-1)[row_pairs.flatten()] = rescored[where[: row_pairs.numel()]]
    text_to_image.view(-1)[column_pairs.flatten()] = rescored[where[row_pairs.numel():]]
    return image_to_text, text_to_image


class RetrievalEvaluator(DatasetEvaluator):
    """Image-text retrieval Recall@k (percent) over the images evaluated and all their captions.

    `process()` takes, per input, an output with `image_embedding` [D] and `text_embeddings` [n, D], the embeddings of
    the image and of its record's n captions, in the record's order. Similarities are their dot products, as given
    (normalise in the model). `evaluate()` gathers the embeddings on the main process (an image seen twice counts
    once), orders the images by image_id, each image's captions after it, and returns `{"retrieval": {"ir_R@k",
    "tr_R@k", "r_mean"}}` (see `retrieval_recalls`); with `output_dir`, each query's rank goes to
    `retrieval_ranks.json`.

    ITM re-ranking (`itm_top_k > 0`, see `rerank_top_k`): `itm_scorer(image_ids [P], captions [P]) -> [P]`, with
    `captions[p] = (image_id, caption index)` naming a caption of the dataset, returns match probabilities. Every
    process scores one share of the candidate pairs (`score_in_shares`), each pair once. The metrics then also hold
    the dual encoder's own recalls, before re-ranking, as `itc_ir_R@k`, `itc_tr_R@k` and `itc_r_mean`.
    """

    results_file = "retrieval_ranks.json"

    def __init__(
        self,
        dataset_name: str,
        output_dir: str | None = None,
        ks: Sequence[int] = TOP_K,
        itm_top_k: int = 0,
        itm_scorer: ItmScorer | None = None,
    ) -> None:
        if itm_top_k < 0 or (itm_top_k > 0) != (itm_scorer is not None):
            raise ValueError(
                f"RetrievalEvaluator({dataset_name!r}): ITM re-ranking needs both itm_top_k > 0 and an itm_scorer "
                f"(or neither); got itm_top_k={itm_top_k} and itm_scorer={itm_scorer!r}"
            )
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._ks = tuple(ks)
        self._itm_top_k = itm_top_k
        self._itm_scorer = itm_scorer
        self._num_captions: dict[Any, int] | None = None
        self._embeddings: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}

    def reset(self) -> None:
        self._embeddings = {}

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Keep each image's embedding [D] and its captions' embeddings [n, D] (on the CPU, float32)."""
        for inputs_i, outputs_i in zip(inputs, outputs):
            image_id = inputs_i["image_id"]
            image = outputs_i["image_embedding"].detach().to("cpu", torch.float32)
            texts = outputs_i["text_embeddings"].detach().to("cpu", torch.float32)
            where = f"dataset {self._dataset_name!r}, image_id {image_id!r}"
            num_captions = self._captions_per_image().get(image_id)
            if num_captions is None:
                raise KeyError(f"image_id {image_id!r} is not a record of dataset {self._dataset_name!r}")
            if image.dim() != 1 or texts.dim() != 2 or texts.shape[1] != image.shape[0]:
                raise ValueError(
                    f"{where}: expected image_embedding [D] and text_embeddings [n, D], got "
                    f"{tuple(image.shape)} and {tuple(texts.shape)}"
                )
            if num_captions == 0:
                raise ValueError(f"{where}: the record has no caption; every evaluated image needs at least one")
            if len(texts) != num_captions:
                raise ValueError(f"{where}: {len(texts)} text embeddings for the record's {num_captions} captions")
            self._embeddings[image_id] = (image, texts)

    def evaluate(self) -> dict[str, dict[str, float]]:
        """`{"retrieval": {metric: percent}}` on the main process, over the images seen by any process; {} elsewhere.
        With ITM re-ranking every process gets the embeddings and scores its share of the candidate pairs."""
        embeddings = gather_unique(self._embeddings, everywhere=bool(self._itm_top_k))
        if embeddings is None:
            return {}
        if not embeddings:
            logger.warning("RetrievalEvaluator on %r: no image was evaluated", self._dataset_name)
            return {}
        unseen = len(self._captions_per_image()) - len(embeddings)
        if unseen:
            logger.warning(
                "RetrievalEvaluator: %d of %d images of %r were never evaluated; the metrics cover the %d images seen",
                unseen, len(self._captions_per_image()), self._dataset_name, len(embeddings),
            )
        image_ids = sorted(embeddings)
        num_captions = [len(embeddings[image_id][1]) for image_id in image_ids]
        captions = [(image_id, j) for image_id, n in zip(image_ids, num_captions) for j in range(n)]
        text_image = torch.repeat_interleave(torch.tensor(num_captions))  # [T]
        images = torch.stack([embeddings[image_id][0] for image_id in image_ids])  # [I, D]
        texts = torch.cat([embeddings[image_id][1] for image_id in image_ids])  # [T, D]
        similarity = images @ texts.T
        text_to_image = None
        itc_metrics = {}
        if self._itm_top_k:
            itc_metrics = {f"itc_{name}": value for name, value in retrieval_recalls(similarity, text_image, self._ks).items()}
            similarity, text_to_image = rerank_top_k(
                similarity,
                self._itm_top_k,
                lambda images, texts: score_in_shares(
                    self._itm_scorer, [image_ids[i] for i in images.tolist()], [captions[t] for t in texts.tolist()]
                ),
            )
            if not comm.is_main_process():
                return {}
        image_ranks, text_ranks = retrieval_ranks(similarity, text_image, text_to_image)
        if self._output_dir:
            self._dump(image_ids, captions, image_ranks, text_ranks)
        metrics = _recalls(image_ranks, text_ranks, self._ks)
        metrics.update(itc_metrics)
        logger.info(
            "RetrievalEvaluator on %r (%d images, %d texts%s), in %%:\n%s",
            self._dataset_name, len(image_ids), len(captions),
            f", ITM re-ranking of the top {self._itm_top_k}" if self._itm_top_k else "", create_small_table(metrics),
        )
        return {"retrieval": metrics}

    def _captions_per_image(self) -> dict[Any, int]:
        if self._num_captions is None:
            captions = captions_by_image_id(self._dataset_name, type(self).__name__)
            self._num_captions = {image_id: len(texts) for image_id, texts in captions.items()}
        return self._num_captions

    def _dump(
        self, image_ids: list, captions: list, image_ranks: torch.Tensor, text_ranks: torch.Tensor
    ) -> None:
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, self.results_file)
        ranks = {
            "image_retrieval": [
                {"image_id": image_id, "caption_index": j, "rank": rank}
                for (image_id, j), rank in zip(captions, image_ranks.tolist())
            ],
            "text_retrieval": [
                {"image_id": image_id, "rank": rank} for image_id, rank in zip(image_ids, text_ranks.tolist())
            ],
        }
        with PathManager.open(path, "w") as f:
            json.dump(ranks, f)
        logger.info("Wrote the rank of each retrieval query to %s", path)


def _check_scores(similarity: torch.Tensor, text_image: torch.Tensor, text_to_image: torch.Tensor) -> None:
    if similarity.dim() != 2 or text_to_image.shape != similarity.shape:
        raise ValueError(
            f"similarity must be [num_images, num_texts] (and text_to_image the same), got "
            f"{tuple(similarity.shape)} and {tuple(text_to_image.shape)}"
        )
    if not (similarity.is_floating_point() and text_to_image.is_floating_point()):
        raise ValueError(f"the scores must be floating point, got {similarity.dtype} and {text_to_image.dtype}")
    num_images, num_texts = similarity.shape
    if text_image.shape != (num_texts,) or text_image.dtype != torch.long:
        raise ValueError(
            f"text_image must be a LongTensor [{num_texts}] (one image index per text), got {text_image.dtype} "
            f"{tuple(text_image.shape)}"
        )
    if num_texts and (text_image.min() < 0 or text_image.max() >= num_images):
        raise ValueError(f"text_image has image indices outside [0, {num_images})")
    textless = (torch.bincount(text_image, minlength=num_images) == 0).nonzero().flatten()
    if len(textless):
        raise ValueError(f"images {textless[:10].tolist()} have no text; every image needs at least one")
    for name, scores in (("similarity", similarity), ("text_to_image", text_to_image)):
        bad = torch.nonzero(~torch.isfinite(scores))
        if len(bad):
            raise ValueError(f"{name} has {len(bad)} non-finite scores, the first at {tuple(bad[0].tolist())}")
