"""Retrieval, VQA and caption evaluators on hand-made data whose metrics are worked out by hand."""
import json
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils import comm

from fiber_d2.config import add_fiber_config
from fiber_d2.data.vqa_answers import vqa_soft_score
from fiber_d2.evaluation import CaptionEvaluator, RetrievalEvaluator, VQAEvaluator, build_evaluator
from fiber_d2.evaluation.caption import cider_d
from fiber_d2.evaluation.retrieval import rerank_top_k, retrieval_ranks, retrieval_recalls

# 3 images x 5 texts; image 0 has texts 0, 1; image 1 has text 2; image 2 has texts 3, 4.
SIMILARITY = torch.tensor([
    [0.9, 0.1, 0.9, 0.2, 0.3],
    [0.5, 0.8, 0.7, 0.4, 0.1],
    [0.5, 0.2, 0.3, 0.4, 0.9],
])
TEXT_IMAGE = torch.tensor([0, 0, 1, 2, 2])
# Rank = 1 + wrong items scoring >= the correct one.
# Image retrieval (columns): t0 1; t1 3 (0.8, 0.2 > 0.1); t2 2 (0.9); t3 2 (image 1 ties at 0.4); t4 1.
IMAGE_RANKS = [1, 3, 2, 2, 1]
# Text retrieval (rows, best own caption): image 0 best 0.9 (t0), t2 ties -> 2; image 1: 0.7, t1 0.8 above -> 2;
# image 2 best 0.9 (t4), its own t3 does not count, nothing else >= 0.9 -> 1.
TEXT_RANKS = [2, 2, 1]
RECALLS_AT_1_2 = {"ir_R@1": 40.0, "ir_R@2": 80.0, "tr_R@1": 100 / 3, "tr_R@2": 100.0,
                  "r_mean": (40 + 80 + 100 / 3 + 100) / 4}

# 2 images x 3 texts without ties, for re-ranking; image 0 has text 0, image 1 has texts 1, 2.
RERANK_SIMILARITY = torch.tensor([[0.9, 0.6, 0.3], [0.2, 0.5, 0.8]])
RERANK_TEXT_IMAGE = torch.tensor([0, 1, 1])


def _reversing_scorer(calls):
    """ITM probabilities 1 - similarity: reverses the order of any set of candidates."""
    def scorer(images, texts):
        calls.append((images.tolist(), texts.tolist()))
        return 1 - RERANK_SIMILARITY[images, texts]
    return scorer


def _approx(metrics):
    return {key: pytest.approx(value) for key, value in metrics.items()}


# ---------------------------------------------------------------- retrieval


def test_retrieval_ranks_and_recalls_with_several_captions_and_ties():
    image_ranks, text_ranks = retrieval_ranks(SIMILARITY, TEXT_IMAGE)
    assert image_ranks.tolist() == IMAGE_RANKS and text_ranks.tolist() == TEXT_RANKS
    assert retrieval_recalls(SIMILARITY, TEXT_IMAGE, ks=(1, 2)) == _approx(RECALLS_AT_1_2)
    default = retrieval_recalls(SIMILARITY, TEXT_IMAGE)
    assert list(default) == ["ir_R@1", "ir_R@5", "ir_R@10", "tr_R@1", "tr_R@5", "tr_R@10", "r_mean"]
    assert default["ir_R@5"] == default["tr_R@5"] == 100.0


def test_ties_count_against_the_correct_item():
    # All scores equal: every wrong item is ranked ahead, so the correct one is last (not first).
    image_ranks, text_ranks = retrieval_ranks(torch.zeros(3, 5), TEXT_IMAGE)
    assert image_ranks.tolist() == [3] * 5
    assert text_ranks.tolist() == [4, 5, 4]  # 5 texts minus the image's own captions, + 1
    assert retrieval_recalls(torch.zeros(3, 5), TEXT_IMAGE, ks=(1,))["r_mean"] == 0.0


def test_retrieval_rejects_bad_input():
    with pytest.raises(ValueError, match=r"images \[1\] have no text"):
        retrieval_ranks(SIMILARITY[:, [0, 1, 3, 4]], torch.tensor([0, 0, 2, 2]))
    with pytest.raises(ValueError, match="LongTensor"):
        retrieval_ranks(SIMILARITY, TEXT_IMAGE.float())
    with pytest.raises(ValueError, match=r"non-finite scores, the first at \(1, 2\)"):
        retrieval_ranks(SIMILARITY.index_put((torch.tensor(1), torch.tensor(2)), torch.tensor(float("nan"))),
                        TEXT_IMAGE)


def test_rerank_reorders_only_inside_the_top_k():
    # Without re-ranking: image ranks 1, 2 (0.6 > 0.5), 1; text ranks 1, 1.
    assert retrieval_recalls(RERANK_SIMILARITY, RERANK_TEXT_IMAGE, ks=(1,)) == _approx(
        {"ir_R@1": 200 / 3, "tr_R@1": 100.0, "r_mean": 250 / 3})
    calls = []
    image_to_text, text_to_image = rerank_top_k(RERANK_SIMILARITY, 2, _reversing_scorer(calls))
    # Top-2 texts of image 0: t0, t1 -> reversed, t1 first: image 0's rank 2. Image 1: t2, t1 -> t1 first: rank 1.
    # Top-2 images of every text are both images -> reversed: t0 -> image 1 first (rank 2), t1 -> image 1 first
    # (rank 1), t2 -> image 0 first (rank 2).
    assert retrieval_recalls(image_to_text, RERANK_TEXT_IMAGE, ks=(1,), text_to_image=text_to_image) == _approx(
        {"ir_R@1": 100 / 3, "tr_R@1": 50.0, "r_mean": 125 / 3})
    assert calls == [([0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2])]  # each candidate pair once, sorted
    # Candidates: probability + (max 0.9 + 1 - min probability 0.1); the rows' non-candidates keep their scores.
    torch.testing.assert_close(image_to_text, torch.tensor([[1.9, 2.2, 0.3], [0.2, 2.3, 2.0]]))
    torch.testing.assert_close(text_to_image, torch.tensor([[1.9, 2.2, 2.5], [2.6, 2.3, 2.0]]))
    # k = 1: a single candidate per query, nothing to reorder.
    top_1 = rerank_top_k(RERANK_SIMILARITY, 1, _reversing_scorer([]))
    assert retrieval_recalls(top_1[0], RERANK_TEXT_IMAGE, text_to_image=top_1[1]) == retrieval_recalls(
        RERANK_SIMILARITY, RERANK_TEXT_IMAGE)


def _retrieval_records():
    return [{"file_name": f"{i}.jpg", "image_id": i, "captions": [f"caption {i}.{j}" for j in range(n)],
             "split": "test"} for i, n in ((10, 2), (20, 1), (30, 2))]


def _retrieval_output(image_id):
    """Unit image embeddings and text embeddings = columns of SIMILARITY, so their dot products are SIMILARITY."""
    index = [10, 20, 30].index(image_id)
    return {"image_embedding": torch.eye(3)[index], "text_embeddings": SIMILARITY[:, TEXT_IMAGE == index].T}


def _evaluate_retrieval(evaluator, image_ids):
    evaluator.reset()
    for image_id in image_ids:
        evaluator.process([{"image_id": image_id}], [_retrieval_output(image_id)])
    return evaluator.evaluate()


def test_retrieval_evaluator_equals_the_function_and_dumps_ranks(register, tmp_path):
    name = register(_retrieval_records(), evaluator_type="retrieval")
    evaluator = RetrievalEvaluator(name, output_dir=str(tmp_path), ks=(1, 2))
    # Out of order and image 20 twice: sorted by image_id, counted once.
    assert _evaluate_retrieval(evaluator, [30, 20, 10, 20]) == {"retrieval": _approx(RECALLS_AT_1_2)}
    dumped = json.loads((tmp_path / "retrieval_ranks.json").read_text())
    assert dumped["text_retrieval"] == [{"image_id": i, "rank": r} for i, r in zip([10, 20, 30], TEXT_RANKS)]
    assert [(q["image_id"], q["caption_index"], q["rank"]) for q in dumped["image_retrieval"]] == [
        (10, 0, 1), (10, 1, 3), (20, 0, 2), (30, 0, 2), (30, 1, 1)]
    with pytest.raises(KeyError, match="image_id 99"):
        evaluator.process([{"image_id": 99}], [_retrieval_output(10)])
    with pytest.raises(ValueError, match=r"image_id 20: 2 text embeddings for the record's 1 captions"):
        evaluator.process([{"image_id": 20}], [_retrieval_output(10)])


def test_retrieval_evaluator_two_processes(register, two_processes):
    name = register(_retrieval_records(), evaluator_type="retrieval")
    two_processes.as_rank1()
    assert _evaluate_retrieval(RetrievalEvaluator(name, ks=(1, 2)), [30, 10]) == {}

    two_processes.as_rank0()
    # Image 10 on both processes (padding) counts once.
    assert _evaluate_retrieval(RetrievalEvaluator(name, ks=(1, 2)), [20, 10]) == {"retrieval": _approx(RECALLS_AT_1_2)}


def test_retrieval_evaluator_itm_reranking_gets_image_and_caption_ids(register):
    records = [{"file_name": "a.jpg", "image_id": "a", "captions": ["x"]},
               {"file_name": "b.jpg", "image_id": "b", "captions": ["y", "z"]}]
    name = register(records, evaluator_type="retrieval")
    outputs = {"a": {"image_embedding": torch.eye(2)[0], "text_embeddings": RERANK_SIMILARITY[:, :1].T},
               "b": {"image_embedding": torch.eye(2)[1], "text_embeddings": RERANK_SIMILARITY[:, 1:].T}}
    texts = [("a", 0), ("b", 0), ("b", 1)]
    seen = []

    def itm_scorer(image_ids, captions):
        seen.append((image_ids, captions))
        return torch.tensor([1 - float(RERANK_SIMILARITY["ab".index(i), texts.index(c)])
                             for i, c in zip(image_ids, captions)])

    evaluator = RetrievalEvaluator(name, ks=(1,), itm_top_k=2, itm_scorer=itm_scorer)
    for image_id in "ba":
        evaluator.process([{"image_id": image_id}], [outputs[image_id]])
    # ITM (1 - similarity) reverses the order of each query's two candidates; the dual encoder's own recalls come too.
    assert evaluator.evaluate() == {"retrieval": _approx({
        "ir_R@1": 100 / 3, "tr_R@1": 50.0, "r_mean": 125 / 3,
        "itc_ir_R@1": 200 / 3, "itc_tr_R@1": 100.0, "itc_r_mean": 250 / 3})}
    assert seen == [(["a", "a", "a", "b", "b", "b"], texts * 2)]
    with pytest.raises(ValueError, match="itm_top_k > 0 and an itm_scorer"):
        RetrievalEvaluator(name, itm_top_k=2)


def _rerank_in_two_processes(out_path, image_ids):
    """One process of a two-process retrieval evaluation with ITM re-ranking (run by `launch`): it registers the
    dataset, evaluates `image_ids[rank]` and writes its result and the pairs it scored."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    rank = comm.get_rank()
    records = [{"file_name": "a.jpg", "image_id": "a", "captions": ["x"]},
               {"file_name": "b.jpg", "image_id": "b", "captions": ["y", "z"]}]
    DatasetCatalog.register("rerank_two_processes", lambda: records)
    MetadataCatalog.get("rerank_two_processes").set(evaluator_type="retrieval")
    outputs = {"a": {"image_embedding": torch.eye(2)[0], "text_embeddings": RERANK_SIMILARITY[:, :1].T},
               "b": {"image_embedding": torch.eye(2)[1], "text_embeddings": RERANK_SIMILARITY[:, 1:].T}}
    texts = [("a", 0), ("b", 0), ("b", 1)]
    scored = []

    def itm_scorer(images, captions):
        scored.extend(zip(images, captions))
        return torch.tensor([1 - float(RERANK_SIMILARITY["ab".index(i), texts.index(c)])
                             for i, c in zip(images, captions)])

    evaluator = RetrievalEvaluator("rerank_two_processes", ks=(1,), itm_top_k=2, itm_scorer=itm_scorer)
    for image_id in image_ids[rank]:
        evaluator.process([{"image_id": image_id}], [outputs[image_id]])
    result = evaluator.evaluate()
    with open(f"{out_path}.{rank}", "w") as f:
        json.dump({"result": result, "scored": scored}, f)


@pytest.mark.slow
def test_retrieval_evaluator_itm_reranking_in_two_processes(tmp_path):
    from fiber_d2.engine import launch

    out = tmp_path / "rank"
    # Image "a" on both processes (the inference sampler's padding) counts once.
    launch(_rerank_in_two_processes, 2, args=(str(out), [["b", "a"], ["a"]]))
    ranks = [json.loads((tmp_path / f"rank.{r}").read_text()) for r in range(2)]
    # The main process gives the single-process metrics; the other gives {}.
    assert ranks[0]["result"] == {"retrieval": _approx({
        "ir_R@1": 100 / 3, "tr_R@1": 50.0, "r_mean": 125 / 3,
        "itc_ir_R@1": 200 / 3, "itc_tr_R@1": 100.0, "itc_r_mean": 250 / 3})}
    assert ranks[1]["result"] == {}
    # The six candidate pairs, sorted by (image, text), split in two contiguous halves, each scored once.
    pairs = [[i, list(c)] for i, c in zip(["a", "a", "a", "b", "b", "b"], [["a", 0], ["b", 0], ["b", 1]] * 2)]
    assert ranks[0]["scored"] == pairs[:3] and ranks[1]["scored"] == pairs[3:]


# ---------------------------------------------------------------- VQA


def test_vqa_soft_score_hand_cases():
    def ten(matches):
        return ["yes"] * matches + ["no"] * (10 - matches)
    # m matches of 10: m subsets drop a match -> min((m-1)/3, 1); 10-m drop another -> min(m/3, 1).
    assert vqa_soft_score("yes", ten(0)) == 0.0
    assert vqa_soft_score("yes", ten(1)) == pytest.approx(9 * (1 / 3) / 10)  # 0.3
    assert vqa_soft_score("yes", ten(2)) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)  # 0.6
    assert vqa_soft_score("yes", ten(3)) == pytest.approx((3 * (2 / 3) + 7 * 1) / 10)  # 0.9
    assert vqa_soft_score("yes", ten(4)) == 1.0
    assert vqa_soft_score("Two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)  # compared after normalisation
    assert vqa_soft_score("yes", ["yes", "yes", "no"]) == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)
    with pytest.raises(ValueError, match="at least one human answer"):
        vqa_soft_score("yes", [])


def _vqa_record(question_id, answers, answer_type):
    return {"file_name": "x.jpg", "image_id": 1, "question_id": question_id, "question": "?", "answers": answers,
            "multiple_choice_answer": answers[0], "answer_type": answer_type}


VQA_RECORDS = [
    _vqa_record(1, ["yes"] * 10, "yes/no"),
    _vqa_record(2, ["yes"] * 7 + ["no"] * 3, "yes/no"),
    _vqa_record(3, ["2"] * 10, "number"),
    _vqa_record(4, ["blue"] * 8 + ["red"] * 2, "other"),
]
# Scores 0 ("Yes" != ten raw "yes"), 0.9, 0 ("two" != ten raw "2"), 0.6: the official script's 37.5 / 0 / 60 / 45.
VQA_ANSWERS = {1: "Yes", 2: "no", 3: "two", 4: "red"}
VQA_METRICS = {"accuracy": 37.5, "accuracy_number": 0.0, "accuracy_other": 60.0, "accuracy_yes/no": 45.0}


def _evaluate_vqa(evaluator, question_ids):
    evaluator.reset()
    for qid in question_ids:
        evaluator.process([{"question_id": qid}], [{"question_id": qid, "answer": VQA_ANSWERS[qid]}])
    return evaluator.evaluate()


def test_vqa_evaluator_accuracy_per_type_and_submission_file(register, tmp_path):
    name = register(VQA_RECORDS, evaluator_type="vqa")
    evaluator = VQAEvaluator(name, output_dir=str(tmp_path))
    assert _evaluate_vqa(evaluator, [4, 3, 2, 1, 3]) == {"vqa": _approx(VQA_METRICS)}
    assert json.loads((tmp_path / "vqa_predictions.json").read_text()) == [
        {"question_id": qid, "answer": VQA_ANSWERS[qid]} for qid in (1, 2, 3, 4)]
    with pytest.raises(KeyError, match="question_id 77"):
        evaluator.process([{}], [{"question_id": 77, "answer": "yes"}])


def test_vqa_evaluator_two_processes(register, two_processes):
    name = register(VQA_RECORDS, evaluator_type="vqa")
    two_processes.as_rank1()
    assert _evaluate_vqa(VQAEvaluator(name), [3, 4]) == {}
    two_processes.as_rank0()
    assert _evaluate_vqa(VQAEvaluator(name), [1, 2, 3]) == {"vqa": _approx(VQA_METRICS)}


# ---------------------------------------------------------------- CIDEr-D

# Two images: "a" is in both reference sets, so its idf is log 2 - log 2 = 0; every other reference n-gram is in one
# set (idf log 2 - log 1 = log 2), and a candidate n-gram in no reference set also gets log 2 (df clipped to 1).
CAPTION_REFERENCES = {1: ["a cat sat"], 2: ["a dog ran"]}


def test_cider_d_identical_and_disjoint_candidates():
    score, per_image = cider_d({1: "a cat sat", 2: "green tree"}, CAPTION_REFERENCES)
    # Image 1, identical: cosine 1 for n = 1, 2, 3 and 0 for n = 4 (no 4-gram), no length
    # penalty: 10 * (1 + 1 + 1 + 0) / 4 = 7.5. Image 2 shares no n-gram with "a dog ran": 0.
    assert per_image == {1: pytest.approx(7.5), 2: 0.0}
    assert score == pytest.approx(3.75)
    # Two references: the identical one (7.5) and one sharing nothing (0), averaged.
    two_refs = cider_d({1: "a cat sat", 2: "a dog ran"}, {1: ["a cat sat", "green tree"], 2: ["a dog ran"]})[1]
    assert two_refs[1] == pytest.approx(7.5 / 2)
    # The same reference twice: df counts images, not references ("cat" keeps df 1), so still 7.5.
    assert cider_d({1: "a cat sat", 2: "x"}, {1: ["a cat sat"] * 2, 2: ["a dog ran"]})[1][1] == pytest.approx(7.5)
    # Only the evaluated images count: one image alone makes every idf log 1 - log 1 = 0.
    assert cider_d({1: "a cat sat"}, CAPTION_REFERENCES) == (0.0, {1: 0.0})
    # The text is taken as tokenised: "sat." is not "sat" (CaptionEvaluator tokenises first).
    assert cider_d({1: "a cat sat.", 2: "x"}, CAPTION_REFERENCES)[1][1] < 7.5


def test_cider_d_length_penalty_hand_computed():
    # "a cat sat on" against "a cat sat" (idf w = log 2 for all but "a", whose idf is 0):
    # n=1: candidate (0, w, w, w), reference (0, w, w): 2w^2 / (sqrt(3) w * sqrt(2) w) = 2 / sqrt(6)
    # n=2: "a cat", "cat sat", "sat on" against "a cat", "cat sat": again 2 / sqrt(6)
    # n=3: "a cat sat", "cat sat on" against "a cat sat": 1 / sqrt(2); n=4: the reference has none: 0
    # length penalty: one word longer, exp(-1^2 / (2 * 6^2)) = exp(-1/72).
    expected = 10 * math.exp(-1 / 72) * (2 * 2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4  # 5.7696
    _, per_image = cider_d({1: "a cat sat on", 2: "a dog ran"}, CAPTION_REFERENCES)
    assert per_image[1] == pytest.approx(expected)
    no_penalty = cider_d({1: "a cat sat on", 2: "a dog ran"}, CAPTION_REFERENCES, sigma=math.inf)[1][1]
    assert per_image[1] == pytest.approx(no_penalty * math.exp(-1 / 72)) and per_image[1] < 7.5
    with pytest.raises(ValueError, match="image_id 3 has a candidate but no reference"):
        cider_d({3: "a cat"}, CAPTION_REFERENCES)


def test_caption_evaluator(register, tmp_path, monkeypatch):
    records = [{"file_name": f"{i}.jpg", "image_id": i, "captions": refs} for i, refs in CAPTION_REFERENCES.items()]
    name = register(records, evaluator_type="caption")
    evaluator = CaptionEvaluator(name, output_dir=str(tmp_path))
    # "A cat, sat." is "a cat sat" once PTB-tokenised: the identical caption of test_cider_d_... (7.5), and 0.
    for image_id, caption in ((2, "green tree"), (1, "A cat, sat."), (2, "green tree")):
        evaluator.process([{"image_id": image_id}], [{"image_id": image_id, "caption": caption}])
    assert evaluator.evaluate() == {"caption": {"CIDEr": pytest.approx(3.75)}}
    assert json.loads((tmp_path / "caption_predictions.json").read_text()) == [
        {"image_id": 1, "caption": "A cat, sat."}, {"image_id": 2, "caption": "green tree"}]
    with pytest.raises(KeyError, match="image_id 5"):
        evaluator.process([{}], [{"image_id": 5, "caption": "x"}])
    # Rank 1 captioned image 2, rank 0 image 1 and image 2 again (padding): the same value.
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [data, {2: "green tree"}])
    evaluator.reset()
    for image_id, caption in ((1, "a cat sat"), (2, "green tree")):
        evaluator.process([{"image_id": image_id}], [{"image_id": image_id, "caption": caption}])
    assert evaluator.evaluate() == {"caption": {"CIDEr": pytest.approx(3.75)}}


def test_build_evaluator_for_coarse_tasks(register):
    cfg = get_cfg()
    add_fiber_config(cfg)
    assert isinstance(build_evaluator(cfg, register([], evaluator_type="retrieval")), RetrievalEvaluator)
    assert isinstance(build_evaluator(cfg, register([], evaluator_type="vqa")), VQAEvaluator)
    assert isinstance(build_evaluator(cfg, register([], evaluator_type="caption")), CaptionEvaluator)
