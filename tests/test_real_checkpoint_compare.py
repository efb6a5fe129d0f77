"""The opt-in real-checkpoint test's own logic (tests/test_real_checkpoint.py), run in every
test run so that it cannot rot while nobody has the weights: which cases it sends, and that
its comparison with ModelScope's answers catches each kind of difference at the tolerances it
states (and passes equal answers)."""

from __future__ import annotations

import types

import pytest

from tests.test_real_checkpoint import (BOX_TOLERANCE, PROBABILITY_TOLERANCE, compare,
                                        select_cases)

TASKS = ("visual-entailment", "image-captioning", "visual-question-answering",
         "visual-grounding")


@pytest.mark.parametrize("task", TASKS)
def test_cases_are_the_first_with_a_text_and_name_real_images(task):
    from tests.golden.cases import build_images

    images = build_images()
    cases = select_cases(task, 12)
    assert len(cases) == 12 and len({c["name"] for c in cases}) == 12
    assert all(c["image"] in images for c in cases)
    assert all(c["text"] is None or c["text"].strip() for c in cases)   # blank texts are skipped
    if task == "image-captioning":
        assert len(select_cases(task, 1000)) == len(images)   # every image once
        assert {c["image"] for c in select_cases(task, 1000)} == set(images)


def test_the_default_entailment_cases_are_twelve_images_the_docstring_names():
    assert [c["image"] for c in select_cases("visual-entailment", 12)] == [
        "bilevel_96x64.png", "exif_rot270_200x320.jpg", "lossless_200x150.webp",
        "photo_640x480.jpg", "square_64x64.bmp", "cmyk_180x120.jpg", "exif_rot90_300x200.jpg",
        "palette_100x100.png", "progressive_400x300.jpg", "tall_40x300.png",
        "cmyk_90x60.tiff", "grey_120x90.png"]
    every = select_cases("visual-entailment", 1000)
    assert any(c["image"].startswith("animated_") for c in every)


def _entailment(probabilities, label, confidence=None):
    named = dict(zip(("entailment", "contradiction", "neutral"), probabilities))
    return types.SimpleNamespace(probabilities=named, label=label,
                                 confidence=max(probabilities) if confidence is None
                                 else confidence)


ENTAILMENT_REFERENCE = {"answers": ["yes", "no", "maybe"], "cases": [
    {"name": "case00", "image": "a.png", "probabilities": [0.7, 0.2, 0.1], "score": 0.7,
     "answer": "yes"}]}
ENTAILMENT_CASES = [{"name": "case00", "image": "a.png", "text": "a dog", "text2": None}]


def test_equal_entailment_answers_pass():
    problems, largest = compare("visual-entailment", ENTAILMENT_CASES, ENTAILMENT_REFERENCE,
                                [_entailment([0.7 + 5e-5, 0.2 - 5e-5, 0.1], "entailment")])
    assert problems == [] and largest["probability"] == pytest.approx(5e-5)


@pytest.mark.parametrize("served, expected", [
    (_entailment([0.7 + 2 * PROBABILITY_TOLERANCE, 0.2, 0.1], "entailment"), "P(yes)"),
    (_entailment([0.7, 0.2, 0.1], "contradiction"), "label 'contradiction'"),
    (_entailment([0.7, 0.2, 0.1], "entailment", confidence=0.69), "confidence 0.690000"),
    (RuntimeError("Stub process is not healthy"), "the service failed"),
])
def test_each_entailment_difference_is_caught(served, expected):
    problems, _ = compare("visual-entailment", ENTAILMENT_CASES, ENTAILMENT_REFERENCE, [served])
    assert len(problems) >= 1 and expected in problems[0], problems
    assert problems[0].startswith("case00 (a.png, 'a dog')")


def test_a_near_tie_in_entailment_does_not_require_the_label():
    reference = {"answers": ["yes", "no", "maybe"], "cases": [
        {"name": "case00", "image": "a.png", "probabilities": [0.45, 0.45005, 0.09995],
         "score": 0.45005, "answer": "no"}]}
    served = _entailment([0.45, 0.45005, 0.09995], "entailment", confidence=0.45005)
    assert compare("visual-entailment", ENTAILMENT_CASES, reference, [served])[0] == []


def test_captions_and_answers_must_be_equal_and_say_how_close_the_beams_were():
    reference = {"cases": [{"name": "image00", "image": "a.png", "caption": "a dog runs",
                            "hypotheses": [{"score": -1.0}, {"score": -1.25}]}]}
    cases = [{"name": "image00", "image": "a.png", "text": None, "text2": None}]
    assert compare("image-captioning", cases, reference, ["a dog runs"])[0] == []
    problems, _ = compare("image-captioning", cases, reference, ["a dog walks"])
    assert problems == ["image00 (a.png): 'a dog walks', ModelScope 'a dog runs' (ModelScope's "
                        "two best finished hypotheses are 2.50e-01 apart)"]
    vqa = {"cases": [{"name": "case00", "image": "a.png", "answer": "two", "score": 0.8}]}
    question = [{"name": "case00", "image": "a.png", "text": "how many?", "text2": None}]
    assert compare("visual-question-answering", question, vqa, ["two"])[0] == []
    problems, _ = compare("visual-question-answering", question, vqa, ["three"])
    assert problems and "'three', ModelScope 'two'" in problems[0]


def test_boxes_must_agree_within_the_stated_tolerance():
    reference = {"cases": [{"name": "case00", "image": "a.png", "box": [10.0, 20.0, 30.0, 40.0],
                            "hypotheses": [{"score": -0.5}]}]}
    cases = [{"name": "case00", "image": "a.png", "text": "the dog", "text2": None}]
    close = [10.0 + BOX_TOLERANCE / 2, 20.0, 30.0, 40.0]
    problems, largest = compare("visual-grounding", cases, reference, [close])
    assert problems == [] and largest["box_px"] == pytest.approx(BOX_TOLERANCE / 2)
    problems, _ = compare("visual-grounding", cases, reference, [[11.0, 20.0, 30.0, 40.0]])
    assert problems and "box [11.0, 20.0, 30.0, 40.0]" in problems[0]


def test_a_missing_answer_is_reported():
    problems, _ = compare("visual-entailment", ENTAILMENT_CASES * 2,
                          {**ENTAILMENT_REFERENCE, "cases": ENTAILMENT_REFERENCE["cases"] * 2},
                          [_entailment([0.7, 0.2, 0.1], "entailment")])
    assert problems == ["1 answers for 2 cases"]
