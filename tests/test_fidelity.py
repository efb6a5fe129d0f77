"""Equality with ModelScope's own pipeline, case by case, for every generated checkpoint.

Goldens: tests/golden/*_visual_entailment.json and *_pixels.npz, written by
tests/golden/make_goldens.py in the ModelScope reference environment.

Tolerances (stated here, asserted below):
- token ids and decoder prompts: identical;
- pixel tensors: within 1e-6 absolute;
- labels: identical;
- probabilities (softmax over the answer scores; its maximum is ModelScope's score): within
  1e-4 absolute, for the PyTorch module and for the exported fp32 ONNX graph.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from ofa_triton.export import load_checkpoint
from ofa_triton.tasks.visual_entailment.labels import ANSWER_TO_LABEL, scores_to_outputs
from ofa_triton.tasks.visual_entailment.preprocessing import VisualEntailmentPreprocessor, stack

PIXEL_TOLERANCE = 1e-6
PROBABILITY_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def goldens(goldens_by_name, golden_name):
    return goldens_by_name[golden_name]


@pytest.fixture(scope="module")
def preprocessor(exported_repositories, golden_name):
    # The exact files and code path the Triton preprocessing model uses.
    return VisualEntailmentPreprocessor.from_directory(
        exported_repositories[golden_name] / "ofa_preprocess" / "1")


@pytest.fixture(scope="module")
def image_bytes(golden_images):
    return {name: path.read_bytes() for name, path in golden_images.items()}


def test_generator_reproduces_the_golden_checkpoint(checkpoint_dirs, goldens, golden_name):
    generated = json.loads((checkpoint_dirs[golden_name] / "GENERATED.json").read_text())
    assert generated == goldens.generator, (
        "the tiny-checkpoint generator no longer writes the weights the goldens were made "
        "from; regenerate them (make goldens, see export/reference/README.md)")


def test_images_are_the_golden_images(goldens, image_bytes):
    for case in goldens.cases:
        digest = hashlib.sha256(image_bytes[case["image"]]).hexdigest()
        assert digest == case["image_sha256"], f"{case['image']} encodes differently now"


def test_token_ids_identical_to_modelscope(goldens, preprocessor):
    assert len(goldens.cases) >= (50 if goldens.name == "tiny" else 16)
    for case in goldens.cases:
        source = preprocessor.source_ids(case["hypothesis"], case["premise"] or None)
        assert source == case["source_ids"], case["name"]
        assert preprocessor.text.decoder_prompt_ids(source) == case["decoder_prompt_ids"], \
            case["name"]


def test_padded_text_inputs_hold_the_same_ids(goldens, preprocessor):
    for case in goldens.cases:
        source, decoder = preprocessor.text_inputs(case["hypothesis"], case["premise"])
        pad = preprocessor.settings.pad_token_id
        assert source[:len(case["source_ids"])].tolist() == case["source_ids"]
        assert (source[len(case["source_ids"]):] == pad).all()
        assert decoder[:len(case["decoder_prompt_ids"])].tolist() == case["decoder_prompt_ids"]


def test_pixels_within_tolerance_of_modelscope(goldens, preprocessor, image_bytes):
    for case in goldens.cases:
        pixels = preprocessor.image_inputs(image_bytes[case["image"]])
        expected = goldens.pixels[case["name"]]
        assert pixels.shape == expected.shape and pixels.dtype == np.float32
        assert np.abs(pixels - expected).max() <= PIXEL_TOLERANCE, case["name"]


def _check_scores(goldens, answer_scores: np.ndarray, source: str) -> None:
    labels, confidence, _ = scores_to_outputs(answer_scores, goldens.answers)
    probabilities = np.exp(answer_scores.astype(np.float64))
    for row, case in enumerate(goldens.cases):
        expected = np.asarray(case["probabilities"])
        difference = np.abs(probabilities[row] - expected).max()
        assert difference <= PROBABILITY_TOLERANCE, \
            f"{source} {case['name']}: probabilities differ by {difference:.2e}"
        assert labels[row] == ANSWER_TO_LABEL[case["answer"]], f"{source} {case['name']}"
        assert abs(confidence[row] - case["score"]) <= PROBABILITY_TOLERANCE


def test_pytorch_module_matches_modelscope(goldens, checkpoint_dirs, golden_name, preprocessor,
                                           image_bytes):
    model = load_checkpoint(checkpoint_dirs[golden_name]).model
    rows = []
    with torch.no_grad():
        for case in goldens.cases:  # one request at a time, unpadded, as ModelScope runs them
            source = torch.tensor([case["source_ids"]])
            decoder = torch.tensor([case["decoder_prompt_ids"]])
            pixels = torch.from_numpy(preprocessor.image_inputs(image_bytes[case["image"]]))[None]
            rows.append(model(source, pixels, decoder)[0].numpy())
    _check_scores(goldens, np.stack(rows), "pytorch")


def test_onnx_graph_matches_modelscope_in_one_padded_batch(goldens, exported_repositories,
                                                           golden_name, preprocessor, image_bytes):
    import onnxruntime as ort

    graph = exported_repositories[golden_name] / "ofa_encoder_decoder" / "1" / "model.onnx"
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    # tensors(), not preprocessor(...): that also applies the request checks, and ModelScope
    # answers the goldens' blank hypotheses, which the service refuses.
    batch = stack([preprocessor.tensors(image_bytes[c["image"]], c["hypothesis"], c["premise"])
                   for c in goldens.cases])
    (answer_scores,) = session.run(["answer_scores"], batch)
    _check_scores(goldens, answer_scores, "onnx")
