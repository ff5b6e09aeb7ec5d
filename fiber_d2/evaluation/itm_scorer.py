"""ITM scores for retrieval re-ranking: (image, caption) pairs of a dataset -> a coarse model's match probability.

`RetrievalEvaluator(itm_top_k=k, itm_scorer=DatasetItmScorer(model, dataset_name, mapper))` re-ranks each query's
top k ITC candidates by the fused model's ITM probability (docs/FIBER_DETAILS.md; the official `compute_itm_recall`
in coarse_grained/fiber/modules/objectives.py scores every pair with ITM, which `itm_top_k` >= the number of images/texts reproduces).
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Sequence

import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import inference_context


class DatasetItmScorer:
    """`scorer(image_ids [P], captions [P]) -> [P]` ITM probabilities, where `captions[p] = (image_id, j)` is caption
    j of an image of `dataset_name`.

    model: a `FiberCoarseModel` (or any model with `preprocess_images`, `pad_texts`, `match_probability`), scored in
    eval mode whatever its mode. mapper: maps a record to `image` [3, S, S] and `captions_input_ids`
    (CoarseDatasetMapper, task "retrieval", is_train=False). Captions are mapped once and kept; one image is kept at a time, so memory stays flat for
    datasets of any size (the evaluator asks for pairs sorted by image). Pairs run `batch_size` at a time, and within
    a batch each image and each caption goes through the backbone below the fused layers once.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        dataset_name: str,
        mapper: Callable[[dict], dict],
        batch_size: int = 64,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"DatasetItmScorer needs batch_size >= 1, got {batch_size}")
        self.model = model
        self.dataset_name = dataset_name
        self.mapper = mapper
        self.batch_size = batch_size
        self._records: dict[Hashable, dict] | None = None
        self._captions: dict[Hashable, list[torch.Tensor]] = {}
        self._image: tuple[Hashable, torch.Tensor] | None = None

    def _record(self, image_id: Hashable) -> dict:
        if self._records is None:
            self._records = {record["image_id"]: record for record in DatasetCatalog.get(self.dataset_name)}
        if image_id not in self._records:
            raise KeyError(f"image_id {image_id!r} is not a record of dataset {self.dataset_name!r}")
        return self._records[image_id]

    def _map(self, image_id: Hashable) -> dict[str, Any]:
        """Map the record; keep its captions' token ids (small) for later pairs."""
        mapped = self.mapper(self._record(image_id))
        self._captions[image_id] = list(mapped["captions_input_ids"])
        return mapped

    def image(self, image_id: Hashable) -> torch.Tensor:
        """The mapped image [3, S, S] of `image_id` (the last one asked for is kept)."""
        if self._image is None or self._image[0] != image_id:
            self._image = (image_id, self._map(image_id)["image"])
        return self._image[1]

    def caption_ids(self, image_id: Hashable, index: int) -> torch.Tensor:
        """Token ids [T] of caption `index` of `image_id`."""
        if image_id not in self._captions:
            self._map(image_id)
        captions = self._captions[image_id]
        if not 0 <= index < len(captions):
            raise IndexError(f"dataset {self.dataset_name!r}, image_id {image_id!r} has no caption {index}")
        return captions[index]

    @torch.no_grad()
    def __call__(self, image_ids: Sequence[Hashable], captions: Sequence[tuple[Hashable, int]]) -> torch.Tensor:
        if len(image_ids) != len(captions):
            raise ValueError(f"{len(image_ids)} images but {len(captions)} captions; pairs must line up")
        # Evaluators run after Detectron2's inference loop has put the model back in its own mode (training, during
        # training): the pairs are scored in eval mode, with no dropout or drop path.
        with inference_context(self.model):
            return self._score(image_ids, captions)

    def _score(self, image_ids: Sequence[Hashable], captions: Sequence[tuple[Hashable, int]]) -> torch.Tensor:
        probabilities = []
        for start in range(0, len(image_ids), self.batch_size):
            batch_images = list(image_ids[start : start + self.batch_size])
            batch_captions = list(captions[start : start + self.batch_size])
            # each image and caption of the batch runs the backbone's lower part once (the model indexes the pairs)
            unique_images = list(dict.fromkeys(batch_images))
            unique_captions = list(dict.fromkeys(batch_captions))
            images = [{"image": self.image(i)} for i in unique_images]
            input_ids, mask = self.model.pad_texts([self.caption_ids(i, j) for i, j in unique_captions])
            image_index = torch.tensor([unique_images.index(i) for i in batch_images], device=input_ids.device)
            text_index = torch.tensor([unique_captions.index(c) for c in batch_captions], device=input_ids.device)
            probability = self.model.match_probability(
                self.model.preprocess_images(images), input_ids, mask, image_index, text_index
            )
            probabilities.append(probability.float().cpu())
        return torch.cat(probabilities) if probabilities else torch.zeros(0)
