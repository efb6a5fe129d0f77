"""Visual question answering and visual grounding against ModelScope's goldens
(tests/golden/*_visual_question_answering.json and *_visual_grounding.json, made by
make_vqa_goldens.py and make_grounding_goldens.py in the reference environment).

Tolerances (stated here, asserted below):
- source token ids and decoder prompts: identical;
- answers: exactly ModelScope's string; every finished hypothesis of a beam search, its tokens
  exactly and in ModelScope's order, its score within 1e-4 (sums of up to 17 float32
  log-probabilities of logits up to tens of nats, batched and padded here, one at a time
  there; observed: 2.6e-5);
- traverse: each answer's summed log-probability within 1e-4 (observed: 2.3e-5), its softmax
  within 1e-5, the winning answer exactly;
- boxes: within 1e-3 pixel (ModelScope's own float32 arithmetic, bit for bit in
  test_grounding_box.py).
All cases in one padded batch through the PyTorch engine, and every case through a real
tritonserver, over HTTP and gRPC, where the four tasks share one repository and one server.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ofa_triton.tiny_checkpoint import generate_tiny_checkpoint
from tests.golden.cases import GROUNDING_CHECKPOINTS, VQA_CHECKPOINTS, build_images

GOLDEN_DIR = Path(__file__).parent / "golden"
SCORE_TOLERANCE = 1e-4
PROBABILITY_TOLERANCE = 1e-5
BOX_TOLERANCE = 1e-3

TASK_FILES = {**{name: "visual_question_answering" for name in VQA_CHECKPOINTS},
              **{name: "visual_grounding" for name in GROUNDING_CHECKPOINTS}}
ALL_CHECKPOINTS = {**VQA_CHECKPOINTS, **GROUNDING_CHECKPOINTS}
# How the shared repository serves each: a name prefix and a runtime (None: the CPU default,
# onnxruntime), so that both runtimes serve both tasks.
SERVED = {"vqa_free": ("", None), "vqa_trie": ("trie_", "torch"),
          "vqa_traverse": ("traverse_", None), "grounding_tiny": ("", None),
          "grounding_variant": ("variant_", "torch")}


def golden_data(name: str) -> dict:
    return json.loads((GOLDEN_DIR / f"{name}_{TASK_FILES[name]}.json").read_text("utf-8"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vqa-grounding")
    return {name: generate_tiny_checkpoint(root / name, **kwargs)
            for name, kwargs in ALL_CHECKPOINTS.items()}


@pytest.mark.parametrize("name", sorted(ALL_CHECKPOINTS))
def test_goldens_are_of_the_generated_checkpoints(checkpoints, name):
    data = golden_data(name)
    checkpoint = checkpoints[name]
    assert json.loads((checkpoint / "GENERATED.json").read_text()) == data["generator"], (
        f"the tiny-checkpoint generator no longer writes the weights the {name} goldens were "
        f"made from; regenerate them (.venv-ref/bin/python tests/golden/make_"
        f"{'vqa' if name.startswith('vqa') else 'grounding'}_goldens.py)")
    assert json.loads((checkpoint / "configuration.json").read_text())["model"] == \
        data["checkpoint_settings"]
    assert len(data["cases"]) >= 30
    images = build_images()
    assert {case["image"] for case in data["cases"]} == set(images)


def test_goldens_are_not_degenerate():
    """Random weights answer and ground: not one answer or box for every case."""
    for name in VQA_CHECKPOINTS:
        answers = [case["answer"] for case in golden_data(name)["cases"]]
        assert len(set(answers)) >= 3, (name, answers)
    for name in GROUNDING_CHECKPOINTS:
        boxes = {tuple(case["box"]) for case in golden_data(name)["cases"]}
        assert len(boxes) >= 10, name


@pytest.fixture(scope="module")
def engines(checkpoints):
    """Each checkpoint loaded as the exporter loads it, with its task's preprocessor."""
    from ofa_triton.export import load_checkpoint
    from ofa_triton.tasks.visual_grounding.preprocessing import GroundingPreprocessor
    from ofa_triton.tasks.visual_question_answering.preprocessing import VqaPreprocessor

    out = {}
    for name, checkpoint in checkpoints.items():
        loaded = load_checkpoint(checkpoint)
        kind = VqaPreprocessor if name.startswith("vqa") else GroundingPreprocessor
        out[name] = (loaded, kind(loaded.settings, checkpoint / "vocab.json",
                                  checkpoint / "merges.txt"))
    return out


@pytest.mark.parametrize("name", sorted(ALL_CHECKPOINTS))
def test_source_ids_and_decoder_prompts_are_modelscopes(engines, name):
    from ofa_triton.text import decoder_prompt

    loaded, preprocessor = engines[name]
    for case in golden_data(name)["cases"]:
        source = preprocessor.source_ids(case["text"])
        assert source == case["source_ids"], case["name"]
        if "decoder_prompt_ids" in case:
            assert decoder_prompt(source, loaded.settings.task.prompt_type,
                                  loaded.text.bos_id) == case["decoder_prompt_ids"]


def _batch(name, engines):
    """All cases of ``name`` in one padded batch, as the server batches them."""
    from ofa_triton.runtime import trim_padding
    from ofa_triton.tasks.preprocessing import stack

    loaded, preprocessor = engines[name]
    images = build_images()
    cases = golden_data(name)["cases"]
    tensors = [preprocessor.tensors(images[c["image"]], c["text"]) for c in cases]
    batch = trim_padding(stack(tensors), loaded.text.pad_id)
    return loaded, cases, batch


@pytest.mark.parametrize("name", sorted(n for n in ALL_CHECKPOINTS if n != "vqa_traverse"))
def test_beam_search_reproduces_modelscope_in_one_batch(engines, name):
    from ofa_triton.generation.answers import AnswerTrie
    from ofa_triton.generation.search import generate, special_tokens
    from ofa_triton.tasks.visual_grounding.box import box_from_tokens
    from ofa_triton.tasks.visual_question_answering import answer_text

    loaded, cases, batch = _batch(name, engines)
    task, text = loaded.settings.task, loaded.text
    trie = AnswerTrie(task.answer_ids, text.bos_id, text.eos_id) if task.answer_ids else None
    results = generate(loaded.model, torch.from_numpy(batch["input_ids"]),
                       torch.from_numpy(batch["patch_images"]), task.generation,
                       special_tokens(text), constrain=trie)
    for case, hypotheses in zip(cases, results):
        assert [h.tokens for h in hypotheses] == [h["tokens"] for h in case["hypotheses"]], \
            case["name"]
        for ours, theirs in zip(hypotheses, case["hypotheses"]):
            assert abs(ours.score - theirs["score"]) <= SCORE_TOLERANCE, case["name"]
        if name.startswith("vqa"):
            assert answer_text(text, hypotheses[0].tokens, task.answers, -1) == case["answer"]
        else:
            size = np.array(batch["image_size"][cases.index(case)])
            box = box_from_tokens(np.array(hypotheses[0].tokens), size, task, text.eos_id)
            assert np.abs(box - np.array(case["box"])).max() <= BOX_TOLERANCE, case["name"]


def test_traverse_reproduces_modelscope_in_one_batch(engines):
    from ofa_triton.generation.answers import AnswerTrie, score_answers, softmax_choice
    from ofa_triton.modeling.generation import CachedDecoding
    from ofa_triton.text import decoder_prompt

    loaded, cases, batch = _batch("vqa_traverse", engines)
    task, text = loaded.settings.task, loaded.text
    data = golden_data("vqa_traverse")
    assert list(task.answers) == data["answers"]
    assert [list(ids) for ids in task.answer_ids] == data["answer_token_ids"]
    trie = AnswerTrie(task.answer_ids, text.bos_id, text.eos_id)
    prompts = [decoder_prompt(c["source_ids"], task.prompt_type, text.bos_id) for c in cases]
    # One length per scoring call, as the generator groups requests.
    for length in sorted({len(p) for p in prompts}):
        rows = [i for i, p in enumerate(prompts) if len(p) == length]
        with torch.inference_mode():
            cache = loaded.model.start(torch.from_numpy(batch["input_ids"][rows]),
                                       torch.from_numpy(batch["patch_images"][rows]),
                                       task.decoder_positions)
            scores = score_answers(CachedDecoding(loaded.model, cache),
                                   [prompts[i] for i in rows], task.answer_ids, trie,
                                   text.pad_id)
        best, probability = softmax_choice(scores)
        for row, i in enumerate(rows):
            case = cases[i]
            assert np.abs(scores[row] - case["answer_scores"]).max() <= SCORE_TOLERANCE
            assert task.answers[best[row]] == case["answer"], case["name"]
            assert abs(probability[row] - case["score"]) <= PROBABILITY_TOLERANCE


# --- served by a real tritonserver ------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_repository(tmp_path_factory, checkpoints, checkpoint_dirs):
    """One repository with all four tasks: entailment, a captioning checkpoint, the three VQA
    and the two grounding checkpoints (name prefixes per SERVED)."""
    from ofa_triton.export import export_repository
    from ofa_triton.triton_config import ServingOptions
    from tests.golden.cases import CAPTION_CHECKPOINTS

    root = tmp_path_factory.mktemp("four-tasks")
    repository = root / "repository"
    export_repository(checkpoint_dirs["tiny"], repository, progress=lambda _: None)
    caption = generate_tiny_checkpoint(root / "caption", **CAPTION_CHECKPOINTS["caption_tiny"])
    export_repository(caption, repository, progress=lambda _: None)
    records = {}
    for name, (prefix, runtime) in SERVED.items():
        records[name] = export_repository(checkpoints[name], repository,
                                          progress=lambda _: None, runtime=runtime,
                                          options=ServingOptions(name_prefix=prefix))
    return repository, records


@pytest.fixture(scope="module")
def server(shared_repository, tmp_path_factory):
    from tests.conftest import start_triton

    with start_triton(shared_repository[0], tmp_path_factory.mktemp("four-server")) as started:
        started.wait_ready()
        yield started


def test_export_reads_each_task_and_validates_the_engine(shared_repository):
    repository, records = shared_repository
    for name, (prefix, runtime) in SERVED.items():
        record = records[name]
        assert record["export"]["task"] == ("visual-question-answering" if name.startswith("vqa")
                                            else "visual-grounding")
        assert record["export"]["runtime"] == (runtime or "onnxruntime")
        assert record["validation"]["max_abs_diff_log_prob"] <= 1e-4
        if runtime is None:
            assert record["validation"]["sample_outputs_equal"]
    names = {p.name for p in repository.iterdir()}
    assert {"ofa_visual_entailment", "ofa_image_caption", "ofa_visual_question_answering",
            "trie_ofa_visual_question_answering", "traverse_ofa_visual_question_answering",
            "ofa_visual_grounding", "variant_ofa_visual_grounding"} <= names


def _url(server, protocol):
    return server.http_url if protocol == "http" else server.grpc_url


@pytest.mark.parametrize("protocol", ("http", "grpc"))
@pytest.mark.parametrize("name", sorted(VQA_CHECKPOINTS))
def test_served_answers_are_modelscopes_exactly(server, name, protocol):
    from ofa_triton.client import PredictionError
    from ofa_triton.tasks.visual_question_answering.client import VisualQuestionAnsweringClient

    cases = golden_data(name)["cases"]
    images = build_images()
    model = SERVED[name][0] + "ofa_visual_question_answering"
    with VisualQuestionAnsweringClient(_url(server, protocol), protocol,
                                       model_name=model) as client:
        # Concurrent requests: the generator batches them into shared searches.
        answers = client.answer_many([{"image": images[c["image"]], "question": c["text"]}
                                      for c in cases], concurrency=8, return_exceptions=True)
    for case, answer in zip(cases, answers):
        if not case["text"].strip():
            # ModelScope answers a blank question; the service refuses it.
            assert isinstance(answer, PredictionError) and answer.status in ("400", "StatusCode.INVALID_ARGUMENT")
        else:
            assert answer == case["answer"], case["name"]


@pytest.mark.parametrize("protocol", ("http", "grpc"))
@pytest.mark.parametrize("name", sorted(GROUNDING_CHECKPOINTS))
def test_served_boxes_are_modelscopes(server, name, protocol):
    from ofa_triton.client import PredictionError
    from ofa_triton.tasks.visual_grounding.client import VisualGroundingClient

    cases = golden_data(name)["cases"]
    images = build_images()
    model = SERVED[name][0] + "ofa_visual_grounding"
    with VisualGroundingClient(_url(server, protocol), protocol, model_name=model) as client:
        boxes = client.ground_many([{"image": images[c["image"]], "text": c["text"]}
                                    for c in cases], concurrency=8, return_exceptions=True)
    for case, box in zip(cases, boxes):
        if not case["text"].strip():
            assert isinstance(box, PredictionError) and box.status in ("400", "StatusCode.INVALID_ARGUMENT")
        else:
            assert np.abs(np.array(box) - np.array(case["box"])).max() <= BOX_TOLERANCE, \
                case["name"]


def test_contracts_and_bad_input(server):
    import tritonclient.http as httpclient

    from ofa_triton.client import PredictionError
    from ofa_triton.tasks.visual_grounding.client import VisualGroundingClient
    from ofa_triton.tasks.visual_question_answering.client import VisualQuestionAnsweringClient

    http = httpclient.InferenceServerClient(server.http_url)
    for model, inputs, outputs in (
            ("ofa_visual_question_answering", [("image", "BYTES", [-1, 1]),
                                               ("question", "BYTES", [-1, 1])],
             [("answer", "BYTES", [-1, 1])]),
            ("ofa_visual_grounding", [("image", "BYTES", [-1, 1]), ("text", "BYTES", [-1, 1])],
             [("box", "FP32", [-1, 4])])):
        metadata = http.get_model_metadata(model)
        assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == inputs
        assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == outputs
    photo = build_images()["photo_640x480.jpg"]
    with VisualQuestionAnsweringClient(server.http_url) as client:
        with pytest.raises(PredictionError) as refused:
            client.answer(b"not an image at all", "what is it?")
        assert refused.value.status == "400" and "image" in str(refused.value)
        with pytest.raises(PredictionError, match="'question' is empty"):
            client.answer(photo, "  ")
        good = client.answer(photo, "what is it?")
        results = client.answer_many([{"image": b"\x89PNG broken", "question": "what?"},
                                      {"image": photo, "question": "what is it?"}],
                                     return_exceptions=True)
        assert isinstance(results[0], PredictionError) and results[1] == good
    with VisualGroundingClient(server.grpc_url, "grpc") as client:
        with pytest.raises(PredictionError, match="'text' is empty"):
            client.ground(photo, "")
        x0, y0, x1, y1 = client.ground(photo, "the man on the left")
        assert all(np.isfinite([x0, y0, x1, y1]))


def test_cli_answers_and_grounds(server, tmp_path):
    import subprocess
    import sys

    vqa = golden_data("vqa_free")["cases"][0]
    grounding = golden_data("grounding_tiny")["cases"][0]
    images = build_images()
    for case in (vqa, grounding):
        (tmp_path / case["image"]).write_bytes(images[case["image"]])
    answered = subprocess.run([sys.executable, "-m", "ofa_triton.cli", "answer",
                               str(tmp_path / vqa["image"]), "--question", vqa["text"],
                               "--url", server.grpc_url, "--protocol", "grpc"],
                              capture_output=True, text=True)
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)["answer"] == vqa["answer"]
    grounded = subprocess.run([sys.executable, "-m", "ofa_triton.cli", "ground",
                               str(tmp_path / grounding["image"]), "--text", grounding["text"],
                               "--url", server.http_url], capture_output=True, text=True)
    assert grounded.returncode == 0, grounded.stderr
    box = json.loads(grounded.stdout)["box"]
    assert np.abs(np.array(box) - np.array(grounding["box"])).max() <= BOX_TOLERANCE


def test_bad_input_never_counts_as_a_backend_failure_of_any_step(server):
    """The premise of the BACKEND-failure alert and of the watchdog's failure counters
    (docs/faults.md, docs/watchdog.md) for the generating tasks too: every invalid image of
    tests/bad_inputs.py and every kind of invalid text, sent to the captioning, VQA and
    grounding ensembles concurrently with valid requests (so that dynamic batches mix them),
    is refused with its 400, and no step of any task counts a BACKEND failure."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from ofa_triton.client import PredictionError
    from ofa_triton.tasks.image_captioning.client import ImageCaptionClient
    from ofa_triton.tasks.visual_grounding.client import VisualGroundingClient
    from ofa_triton.tasks.visual_question_answering.client import VisualQuestionAnsweringClient
    from ofa_triton.watchdog import backend_failures
    from tests.bad_inputs import INVALID_IMAGES, MEGABYTES_OF_TEXT

    photo = build_images()["photo_640x480.jpg"]
    bad_texts = {"empty": "", "blank": " \t\n ", "megabytes": MEGABYTES_OF_TEXT}
    jobs = []   # (client class, model, call, request, the refusal's fragment or None)
    for client_class, model, call, field in (
            (VisualQuestionAnsweringClient, "ofa_visual_question_answering", "answer", "question"),
            (VisualGroundingClient, "variant_ofa_visual_grounding", "ground", "text"),
            (ImageCaptionClient, "ofa_image_caption", "caption", None)):
        texts = {field: "what is on the left?"} if field else {}
        for make, fragment in INVALID_IMAGES.values():
            jobs.append((client_class, model, call, {"image": make(), **texts}, fragment))
        for text in bad_texts.values() if field else ():
            jobs.append((client_class, model, call, {"image": photo, field: text}, f"'{field}'"))
        jobs += [(client_class, model, call, {"image": photo, **texts}, None)] * 4
    jobs = [jobs[i] for i in np.random.default_rng(0).permutation(len(jobs))]

    def send(job):
        client_class, model, call, request, fragment = job
        with client_class(server.http_url, model_name=model) as client:
            try:
                getattr(client, call)(*request.values())
            except PredictionError as error:
                return fragment is not None and error.status == "400" and fragment in str(error)
            return fragment is None

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(send, jobs))
    assert all(outcomes), [job[1:3] + (job[4],) for job, ok in zip(jobs, outcomes) if not ok]
    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{server.options.metrics_port}/metrics", timeout=10).read().decode()
    failures = backend_failures(metrics)
    steps = {"ofa_caption_generator", "ofa_vqa_generator", "variant_ofa_grounding_generator"}
    assert steps <= set(failures), sorted(failures)   # the counters exist: 0 means something
    assert all(count == 0 for count in failures.values()), failures
