"""Image captioning against ModelScope's goldens (tests/golden/*_image_captioning.json, made by
tests/golden/make_caption_goldens.py in the reference environment).

What is pinned so far: the generated captioning checkpoints are the ones the goldens were made
from, and the encoder's source ids of the caption prompt are ModelScope's. The exported
encoder, the cached decoder step and the beam search come next (issue 14); they will be held
to exact captions here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ofa_triton.text import OfaTextEncoder
from ofa_triton.tiny_checkpoint import generate_tiny_checkpoint
from tests.golden.cases import CAPTION_CHECKPOINTS, build_images

GOLDEN_DIR = Path(__file__).parent / "golden"
CAPTION_PROMPT = " what does the image describe?"   # ModelScope's default captioning prompt


@pytest.fixture(scope="module", params=sorted(CAPTION_CHECKPOINTS))
def golden(request, tmp_path_factory):
    name = request.param
    data = json.loads((GOLDEN_DIR / f"{name}_image_captioning.json").read_text("utf-8"))
    checkpoint = generate_tiny_checkpoint(tmp_path_factory.mktemp(name) / name,
                                          **CAPTION_CHECKPOINTS[name])
    return name, data, checkpoint


def test_generator_reproduces_the_golden_checkpoint(golden):
    _, data, checkpoint = golden
    assert json.loads((checkpoint / "GENERATED.json").read_text()) == data["generator"], (
        "the tiny-checkpoint generator no longer writes the weights the captioning goldens "
        "were made from; regenerate them (.venv-ref/bin/python "
        "tests/golden/make_caption_goldens.py)")
    settings = json.loads((checkpoint / "configuration.json").read_text())
    assert settings["task"] == "image-captioning"
    assert settings["model"] == data["checkpoint_settings"]


def test_goldens_cover_every_image_with_word_captions(golden):
    _, data, _ = golden
    images = build_images()
    assert sorted(case["image"] for case in data["cases"]) == sorted(images)
    for case in data["cases"]:
        assert case["caption"] and case["caption"].replace(" ", "").isalpha(), case
        best = case["hypotheses"][0]
        assert best["tokens"][-1] == 2 and best["score"] == max(
            h["score"] for h in case["hypotheses"])


def test_prompt_source_ids_are_modelscopes(golden):
    _, data, checkpoint = golden
    text = OfaTextEncoder(checkpoint / "vocab.json", checkpoint / "merges.txt",
                          max_src_length=data["checkpoint_settings"]["max_src_length"],
                          prompt_type="none")
    for case in data["cases"]:
        assert text.source_ids(CAPTION_PROMPT) == case["source_ids"]


@pytest.fixture(scope="module")
def captioner(golden):
    """The checkpoint in this project's PyTorch generation module, with its settings."""
    import torch

    from ofa_triton.beam_search import GenerationSettings
    from ofa_triton.image import IMAGENET_MEAN_STD, OFA_MEAN_STD, ImageTransform
    from ofa_triton.modeling import OfaArchitecture
    from ofa_triton.modeling.generation import OfaGenerationModel

    _, data, checkpoint = golden
    settings = data["checkpoint_settings"]
    arch = OfaArchitecture.from_config_dict(json.loads((checkpoint / "config.json").read_text()))
    model = OfaGenerationModel(arch)
    model.load_checkpoint(torch.load(checkpoint / "pytorch_model.bin", weights_only=True))
    text = OfaTextEncoder(checkpoint / "vocab.json", checkpoint / "merges.txt",
                          max_src_length=settings["max_src_length"], prompt_type="none")
    mean, std = IMAGENET_MEAN_STD if settings["imagenet_default_mean_and_std"] else OFA_MEAN_STD
    transform = ImageTransform(settings["patch_image_size"], tuple(mean), tuple(std))
    return (model, text, transform,
            GenerationSettings.from_configuration(settings.get("beam_search")))


SCORE_TOLERANCE = 2e-5   # beam scores (sums of log-probabilities over up to 17 steps)


def _check_against_goldens(cases, results, text):
    from ofa_triton.tasks.image_captioning.generation import caption_text

    for case, hypotheses in zip(cases, results):
        # Exactly ModelScope's caption, and every finished hypothesis in its order.
        assert caption_text(text, hypotheses[0].tokens) == case["caption"], case["image"]
        assert [h.tokens for h in hypotheses] == [h["tokens"] for h in case["hypotheses"]]
        for ours, theirs in zip(hypotheses, case["hypotheses"]):
            assert abs(ours.score - theirs["score"]) <= SCORE_TOLERANCE, case["image"]


@pytest.mark.parametrize("batched", (True, False), ids=("one-batch", "one-at-a-time"))
def test_beam_search_reproduces_modelscope_exactly(golden, captioner, batched):
    """Every image of the corpus: all requests in one beam search (each leaving the batch when
    done, as the server runs them), and one request at a time (as ModelScope runs them)."""
    import numpy as np
    import torch

    from ofa_triton.image import decode_image
    from ofa_triton.tasks.image_captioning.generation import (CAPTION_PROMPT, generate,
                                                              special_tokens)

    _, data, _ = golden
    model, text, transform, settings = captioner
    images = build_images()
    cases = data["cases"]
    pixels = torch.from_numpy(np.stack([transform(decode_image(images[c["image"]]))
                                        for c in cases]))
    source = torch.tensor([text.source_ids(CAPTION_PROMPT)] * len(cases))
    if batched:
        results = generate(model, source, pixels, settings, special_tokens(text))
    else:
        results = [generate(model, source[i:i + 1], pixels[i:i + 1], settings,
                            special_tokens(text))[0] for i in range(len(cases))]
    _check_against_goldens(cases, results, text)


def test_decode_is_modelscopes_slow_tokenizer(golden):
    """Added tokens are pieces of their own, joined with spaces, without clean-up (what
    ModelScope's BartTokenizer printed for these ids in the reference environment)."""
    _, _, checkpoint = golden
    text = OfaTextEncoder(checkpoint / "vocab.json", checkpoint / "merges.txt",
                          max_src_length=80, prompt_type="none")
    ids = text.tokenizer.encode(" a man isn't here , he 's gone . <code_5> and <bin_3>",
                                add_special_tokens=False).ids
    expected = " a man isn't here , he 's gone .  <code_5>  and  <bin_3>"
    assert text.decode(ids) == expected
    assert text.decode([text.bos_id, *ids, text.eos_id, text.pad_id]) == expected
