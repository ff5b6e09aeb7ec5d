"""Swap probe: does a coarse model read a word or a relation in the image, or only prefer it?

For each caption of a dataset and each swap of it (`word_swaps`, `order_swaps`: the negatives that
INPUT.COARSE.ITM_SWAP_WORDS and ITM_SWAP_ORDER train with), the probe asks whether the fused model (ITM) and the dual
encoder (ITC) score the true caption above the swapped one against the caption's own image. Chance is 50.

A word score alone can mislead: a model that prefers "above" to "below" without looking at the image scores 100 on
the captions that say "above" and 0 on those that say "below", so its mean over all captions is the split's share
of "above" captions. The balanced score of a word group is the mean over its words of each word's score: 50 for any
model that ignores the image. An order swap keeps every word of the caption, so no word preference helps it at all.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable, Sequence

import torch
from detectron2.evaluation import inference_context

from ..data.swapped_captions import order_swaps, word_swaps


def caption_swaps(
    caption: str, word_groups: Sequence[Sequence[str]], relations: Sequence[str]
) -> list[tuple[str, str]]:
    """(key, swapped caption) for every word swap (key: the replaced word) and order swap (key: "order: <relation>")."""
    orders = [(f"order: {relation}", swapped) for relation, swapped in order_swaps(caption, relations)]
    return word_swaps(caption, word_groups) + orders


@torch.no_grad()
def swap_probe(
    model: torch.nn.Module,
    records: Iterable[dict],
    mapper: Callable[[dict], dict],
    encode: Callable[[str], torch.Tensor],
    word_groups: Sequence[Sequence[str]] = (),
    relations: Sequence[str] = (),
) -> dict[str, dict[str, float]]:
    """{key: {"pairs": n, "itm": %, "itc": %}}: over the (caption, swap) pairs of `records`' captions, the share in
    percent where ITM's match probability / ITC's similarity is higher for the true caption. Keys: each replaced word
    and "order: <relation>" with pairs, "order" over all order swaps, and "balanced: w1/w2/..." per word group (the
    mean of its words' scores, over the words with pairs).

    model: a `FiberCoarseModel` (`preprocess_images`, `image_embeddings`, `pad_texts`, `match_probability`,
    `text_embeddings`), run in eval mode. mapper: record -> {"image": [3, S, S]} (CoarseDatasetMapper, inference).
    encode: caption -> token ids [T] as the mapper encodes them. records: with "captions" (list of str).
    """
    wins: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # pairs, ITM wins, ITC wins
    with inference_context(model):
        for record in records:
            swaps_of = [(caption, caption_swaps(caption, word_groups, relations)) for caption in record["captions"]]
            if not any(swaps for _, swaps in swaps_of):
                continue
            image = model.preprocess_images([{"image": mapper(record)["image"]}])
            image_embedding = model.image_embeddings(image)
            for caption, swaps in swaps_of:
                if not swaps:
                    continue
                input_ids, mask = model.pad_texts([encode(text) for text in [caption] + [s for _, s in swaps]])
                itm = model.match_probability(image.expand(len(input_ids), -1, -1, -1), input_ids, mask)
                itc = (model.text_embeddings(input_ids, mask) @ image_embedding.T).squeeze(1)
                for k, (key, _) in enumerate(swaps, start=1):
                    for counts in (wins[key], wins["order"]) if key.startswith("order: ") else (wins[key],):
                        counts[0] += 1
                        counts[1] += int(itm[0] > itm[k])
                        counts[2] += int(itc[0] > itc[k])
    results = {key: {"pairs": n, "itm": 100.0 * itm / n, "itc": 100.0 * itc / n} for key, (n, itm, itc) in wins.items()}
    for group in word_groups:
        scored = [results[word] for word in group if word in results]
        if scored:
            results["balanced: " + "/".join(group)] = {
                "pairs": sum(r["pairs"] for r in scored),
                **{head: sum(r[head] for r in scored) / len(scored) for head in ("itm", "itc")},
            }
    return dict(sorted(results.items()))
