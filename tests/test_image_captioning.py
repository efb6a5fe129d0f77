"""Image captioning against ModelScope's goldens (tests/golden/*_image_captioning.json, made by
tests/golden/make_caption_goldens.py in the reference environment).

Tolerances (stated here, asserted below): the caption, exactly; every finished hypothesis of
the beam search, its tokens exactly and in ModelScope's order; its score within 2e-5 (a sum of
up to 17 log-probabilities; observed 7.6e-6). Through the PyTorch generation module, batched and
one request at a time, and through a real tritonserver over HTTP and gRPC.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ofa_triton.tasks.image_captioning import CAPTION_PROMPT
from ofa_triton.text import OfaTextEncoder
from ofa_triton.tiny_checkpoint import generate_tiny_checkpoint
from tests.golden.cases import CAPTION_CHECKPOINTS, build_images

GOLDEN_DIR = Path(__file__).parent / "golden"


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

    from ofa_triton.generation.beam_search import GenerationSettings
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
    from ofa_triton.tasks.image_captioning import caption_text

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
    from ofa_triton.generation.search import generate, special_tokens

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


# --- served by a real tritonserver ------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_repository(tmp_path_factory, checkpoint_dirs):
    """One repository with visual entailment and both captioning checkpoints side by side (the
    variant under a name prefix): the tiny one for onnxruntime (the CPU default), the variant
    for the PyTorch runtime, so that the server runs both."""
    from ofa_triton.export import export_repository
    from ofa_triton.triton_config import ServingOptions

    root = tmp_path_factory.mktemp("shared")
    repository = root / "repository"
    export_repository(checkpoint_dirs["tiny"], repository, progress=lambda _: None)
    records = {}
    for name, prefix, runtime in (("caption_tiny", "", None),
                                  ("caption_variant", "variant_", "torch")):
        checkpoint = generate_tiny_checkpoint(root / name, **CAPTION_CHECKPOINTS[name])
        records[name] = export_repository(checkpoint, repository, progress=lambda _: None,
                                          options=ServingOptions(name_prefix=prefix),
                                          runtime=runtime)
    return repository, records


@pytest.fixture(scope="module")
def caption_server(shared_repository, tmp_path_factory):
    from tests.conftest import start_triton

    with start_triton(shared_repository[0], tmp_path_factory.mktemp("caption-server")) as server:
        server.wait_ready()
        yield server


def test_export_reads_the_task_and_writes_its_models(shared_repository):
    repository, records = shared_repository
    assert sorted(p.name for p in repository.iterdir()) == sorted([
        "ofa_preprocess", "ofa_encoder_decoder", "ofa_postprocess", "ofa_visual_entailment",
        *(prefix + model for prefix in ("", "variant_") for model in (
            "ofa_caption_preprocess", "ofa_caption_generator", "ofa_caption_postprocess",
            "ofa_image_caption"))])
    record = records["caption_tiny"]
    assert record["export"]["task"] == "image-captioning"
    assert record["export"]["runtime"] == "onnxruntime"   # the CPU default
    assert record["validation"]["max_abs_diff_log_prob"] <= 1e-4
    assert record["validation"]["sample_outputs_equal"]
    assert set(record["validation"]["graphs"]) == {"encoder.onnx", "decoder_step.onnx"}
    assert records["caption_variant"]["export"]["runtime"] == "torch"
    config = (repository / "ofa_caption_generator" / "config.pbtxt").read_text()
    assert "dims: [ 17 ]" in config                     # max_len_b 16 + eos
    config = (repository / "variant_ofa_caption_generator" / "config.pbtxt").read_text()
    assert "dims: [ 11 ]" in config                     # max_len_b 10 + eos


@pytest.mark.parametrize("protocol", ("http", "grpc"))
@pytest.mark.parametrize("name", sorted(CAPTION_CHECKPOINTS))
def test_served_captions_are_modelscopes_exactly(caption_server, name, protocol):
    from ofa_triton.tasks.image_captioning.client import ImageCaptionClient

    data = json.loads((GOLDEN_DIR / f"{name}_image_captioning.json").read_text("utf-8"))
    url = caption_server.http_url if protocol == "http" else caption_server.grpc_url
    model = "ofa_image_caption" if name == "caption_tiny" else "variant_ofa_image_caption"
    images = build_images()
    with ImageCaptionClient(url, protocol, model_name=model) as client:
        # Concurrent requests: the generator batches them into shared beam searches.
        captions = client.caption_many([images[c["image"]] for c in data["cases"]],
                                       concurrency=8)
    assert captions == [c["caption"] for c in data["cases"]]


def test_entailment_still_answers_beside_captioning(caption_server, goldens_by_name,
                                                   golden_images):
    from ofa_triton.tasks.visual_entailment.client import VisualEntailmentClient
    from tests.conftest import assert_answers_match_goldens

    assert_answers_match_goldens(VisualEntailmentClient(caption_server.grpc_url, "grpc"),
                                 goldens_by_name["tiny"], golden_images)


def test_caption_contract_and_bad_input(caption_server):
    import tritonclient.http as httpclient

    from ofa_triton.client import PredictionError
    from ofa_triton.tasks.image_captioning.client import ImageCaptionClient

    metadata = httpclient.InferenceServerClient(caption_server.http_url).get_model_metadata(
        "ofa_image_caption")
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [
        ("image", "BYTES", [-1, 1])]
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
        ("caption", "BYTES", [-1, 1])]
    with ImageCaptionClient(caption_server.http_url) as client:
        with pytest.raises(PredictionError) as refused:
            client.caption(b"not an image at all")
        assert refused.value.status == "400" and "image" in str(refused.value)
        good = client.caption(build_images()["photo_640x480.jpg"])
        # One bad request among good ones fails alone.
        results = client.caption_many([b"\x89PNG broken", build_images()["photo_640x480.jpg"]],
                                      return_exceptions=True)
        assert isinstance(results[0], PredictionError) and results[1] == good


def test_cli_captions_images_and_names_the_ones_it_cannot_read(caption_server, tmp_path):
    import subprocess
    import sys

    data = json.loads((GOLDEN_DIR / "caption_tiny_image_captioning.json").read_text("utf-8"))
    case = data["cases"][0]
    image = tmp_path / case["image"]
    image.write_bytes(build_images()[case["image"]])
    result = subprocess.run([sys.executable, "-m", "ofa_triton.cli", "caption", str(image),
                             str(tmp_path / "missing.jpg"), "--url", caption_server.grpc_url,
                             "--protocol", "grpc"], capture_output=True, text=True)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 1, result.stderr
    assert lines[0] == {"image": str(image), "caption": case["caption"]}
    assert "missing.jpg" in lines[1]["image"] and "not a file" in lines[1]["error"]


def test_onnx_graphs_are_fp32_only(tmp_path):
    from ofa_triton.export import export_repository

    checkpoint = generate_tiny_checkpoint(tmp_path / "c", **CAPTION_CHECKPOINTS["caption_tiny"])
    with pytest.raises(ValueError, match="graphs are fp32.*--runtime torch"):
        export_repository(checkpoint, tmp_path / "r", precision="fp16",
                          runtime="onnxruntime", progress=lambda _: None)
    with pytest.raises(ValueError, match="int8 is for --device cpu|--runtime"):
        export_repository(checkpoint, tmp_path / "r2", precision="int8", runtime="torch",
                          progress=lambda _: None)
