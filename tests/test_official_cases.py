"""Evaluators on small realistic cases whose expected values come from running the official tools on the same
data: the VQA evaluation (GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py) and coco-caption
(pycocoevalcap 1.2: the Java PTBTokenizer 3.4.1, then its CIDEr-D). The values before this code followed the
official rules were 87.0 (VQA) and 3.2107 (CIDEr-D)."""
import pytest

from fiber_d2.evaluation import CaptionEvaluator, VQAEvaluator

# (question_id, the ten human answers, answer_type, predicted answer)
VQA_QUESTIONS = [
    (1, ["yes"] * 10, "yes/no", "yes"),
    (2, ["no"] * 10, "yes/no", "no"),
    (3, ["yes"] * 7 + ["no"] * 3, "yes/no", "yes"),
    (4, ["2"] * 10, "number", "2"),
    (5, ["2"] * 6 + ["two"] * 4, "number", "2"),
    (6, ["t-shirt"] * 10, "other", "t shirt"),
    (7, ["Yes"] * 10, "yes/no", "yes"),
    (8, ["red and white"] * 6 + ["red/white"] * 4, "other", "red and white"),
    (9, ["dont know"] * 4 + ["no"] * 6, "other", "don't know"),
    (10, ["i'm not sure"] * 3 + ["im not sure"] * 3 + ["no"] * 4, "other", "i'm not sure"),
    (11, ["tennis racket"] * 10, "other", "tennis racquet"),
    (12, ["2:30"] * 4 + ["230"] * 3 + ["2:30 pm"] * 3, "number", "230"),
    (13, ["cell phone"] * 10, "other", "phone"),
    (14, ["3"] * 3 + ["4"] * 7, "number", "3"),
    (15, ["frisbee"] * 9 + ["Frisbee"] * 1, "other", "frisbee"),
    (16, ["black and white"] * 10, "other", "black and white"),
    (17, ["10:30"] * 10, "number", "10:30"),
    (18, ["1,000"] * 10, "number", "1000"),
    (19, ["giraffe"] * 5 + ["giraffes"] * 5, "other", "giraffes"),
    (20, ["wii"] * 8 + ["nintendo"] * 2, "other", "nintendo"),
]
CAPTION_REFERENCES = {
    1: [
        "A man's surfboard is leaning against a wall.",
        "A surfboard leaning on a white wall.",
        "The man's board rests against the wall.",
        "A blue surfboard propped up against a wall",
        "A surf board next to a brick wall.",
    ],
    2: [
        "A black-and-white photo of a cat on a couch.",
        "A cat lying on a couch in black and white.",
        "A black and white cat sleeping on a sofa",
        "An old black-and-white picture of a cat.",
        "A kitty curled up on the couch.",
    ],
    3: [
        "Two kids' bikes parked by a tree.",
        "Two bicycles parked next to a tree.",
        "A pair of children's bikes near a tree",
        "Two small bikes leaning on a tree trunk.",
        "Bikes parked beside a large tree.",
    ],
    4: [
        "A woman in a t-shirt is holding a frisbee.",
        "A girl wearing a T-shirt holds a frisbee.",
        "A woman holding a red frisbee in a park.",
        "A young woman with a frisbee, smiling.",
        "A lady in a white t-shirt holding a disc.",
    ],
    5: [
        "A double-decker bus on a city street.",
        "A red double-decker bus driving down the street.",
        "A bus that's red is on the road.",
        "A tall red bus in a busy city.",
        "A double decker bus stopped at a light.",
    ],
    6: [
        "A plate of food with broccoli, carrots, and rice.",
        "A dinner plate with vegetables and rice",
        "Rice, broccoli and carrots on a plate.",
        "A healthy meal (rice and veggies) on a dish.",
        "A white plate holding rice and vegetables.",
    ],
    7: [
        "A man's hand holding a hot dog.",
        "Someone holding a hot-dog with mustard.",
        "A hand holds a hot dog in a bun.",
        "A person's hand with a hot dog.",
        "A hot dog with ketchup held by a man.",
    ],
    8: [
        "A giraffe standing next to a zebra.",
        "A zebra and a giraffe in a field.",
        "A giraffe and zebra grazing together",
        "Giraffe and zebra in the zoo's enclosure.",
        "A tall giraffe near a small zebra.",
    ],
}
CAPTION_CANDIDATES = {
    1: "A man's surfboard leaning against a wall.",
    2: "A black-and-white cat lying on a couch.",
    3: "Two kids' bikes parked next to a tree.",
    4: "A woman in a t-shirt holding a frisbee.",
    5: "A red double-decker bus on a city street.",
    6: "A plate with rice, broccoli and carrots.",
    7: "A person's hand holding a hot dog.",
    8: "A giraffe and a zebra standing in a field.",
}


def test_vqa_accuracy_equals_the_official_script(register):
    records = [{"file_name": "x.jpg", "image_id": 1, "question_id": q, "question": "?", "answers": answers,
                "multiple_choice_answer": answers[0], "answer_type": answer_type}
               for q, answers, answer_type, _ in VQA_QUESTIONS]
    evaluator = VQAEvaluator(register(records, evaluator_type="vqa"))
    evaluator.reset()
    for q, _, _, predicted in VQA_QUESTIONS:
        evaluator.process([{"question_id": q}], [{"question_id": q, "answer": predicted}])
    assert evaluator.evaluate() == {"vqa": {"accuracy": 71.5, "accuracy_number": 80.0, "accuracy_other": 65.0,
                                            "accuracy_yes/no": 75.0}}


def test_cider_d_of_raw_captions_equals_coco_caption(register):
    records = [{"file_name": f"{i}.jpg", "image_id": i, "captions": refs} for i, refs in CAPTION_REFERENCES.items()]
    evaluator = CaptionEvaluator(register(records, evaluator_type="caption"))
    evaluator.reset()
    for image_id, caption in CAPTION_CANDIDATES.items():
        evaluator.process([{"image_id": image_id}], [{"image_id": image_id, "caption": caption}])
    assert evaluator.evaluate() == {"caption": {"CIDEr": pytest.approx(2.7934023468558644, abs=1e-12)}}
