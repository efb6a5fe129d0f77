"""Opt-in: a real checkpoint's served answers against ModelScope's own pipeline.

The goldens (tests/golden/) prove the service equal to ModelScope on generated checkpoints
(random weights, a toy vocabulary). This test runs the same comparison on any checkpoint in
ModelScope layout, such as a downloaded ``damo/ofa_visual-entailment_snli-ve_large_en`` with
its real BART vocabulary:

    OFA_REAL_CHECKPOINT=/path/to/checkpoint \
        .venv/bin/python -m pytest -q tests/test_real_checkpoint.py

It reads the checkpoint's task from its configuration.json (``ofa_triton.checkpoint``), asks
ModelScope's pipeline for that task for the answers to a set of cases in the reference
environment (``OFA_REFERENCE_PYTHON``, default ``.venv-ref/bin/python``, made by
``make reference-env``; tests/golden/reference_answers.py in a subprocess), exports the
checkpoint with this project's exporter (CPU, onnxruntime, fp32) into a temporary repository,
serves it with a real tritonserver and compares every served answer with ModelScope's.

Cases: the golden image corpus (tests/golden/cases.py) with the texts of its cases; the first
``OFA_REAL_CASES`` (default 12) whose text is not blank: ModelScope answers a blank text, the
service refuses it, which the golden tests cover. For visual entailment the first twelve are
twelve different images (JPEG, progressive JPEG, PNG, lossless WebP, BMP and TIFF; EXIF
rotations, grey, palette, bilevel and CMYK; tests/test_real_checkpoint_compare.py lists them)
and texts with punctuation, case, hyphens, slashes, runs of whitespace, non-ASCII, emoji,
``<person>``, ``<code_*>``/``<bin_*>`` and a text over ``max_src_length``; the GIF and the
animated files come later in the corpus (``OFA_REAL_CASES=61`` takes every case). Captioning
takes every image in turn (up to all 29).
The requests are sent concurrently (4 in flight over gRPC), so the generating tasks answer
them in shared, batched beam searches, as a loaded server does.

Tolerances, those of the golden tests, kept for real weights:
- visual entailment: the three probabilities and the confidence within 1e-4
  (tests/conftest.py PROBABILITY_TOLERANCE), and ModelScope's label wherever its two best
  answers are more than 2e-4 apart. Both sides get identical token ids and pixels (the goldens
  check them to 1e-6); what is left is float32 summation order, and the export itself refuses
  an ONNX graph that differs from the PyTorch module by more than 1e-4 in log-probability, on
  the real weights too; so a real checkpoint needs no looser bound.
- image captioning and visual question answering: the caption or answer string exactly.
  A real model can, rarely, have two beams so close that summation order decides between
  them; the failure message then shows how far apart ModelScope's two best finished
  hypotheses were, to tell such a near-tie from a real difference.
- visual grounding: every coordinate within 1e-3 pixel. A box is computed from four
  generated bins with ModelScope's own float32 arithmetic (tests/test_grounding_box.py);
  anything but the same bins moves a coordinate by at least one bin (max_image_size / 999 /
  the resize ratio, half a pixel or more), so 1e-3 tells equal boxes from different ones
  whatever the weights.

Other settings: ``OFA_REAL_REFERENCE_ANSWERS=/path/answers.json`` keeps ModelScope's answers
there (the reference run of a large checkpoint takes minutes) and reuses them on the next run
when they were made for the same checkpoint files and cases.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_SCRIPT = ROOT / "tests" / "golden" / "reference_answers.py"
DEFAULT_REFERENCE_PYTHON = ".venv-ref/bin/python"
DEFAULT_CASES = 12
CONCURRENCY = 4
REFERENCE_TIMEOUT_S = 4 * 3600     # a huge checkpoint on a slow CPU, 29 captions
READY_TIMEOUT_S = 1800             # tritonserver loads and warms up every step

PROBABILITY_TOLERANCE = 1e-4       # tests/conftest.py, the served entailment goldens
BOX_TOLERANCE = 1e-3               # tests/test_vqa_and_grounding.py, in pixels

HOW_TO_RUN = (
    "opt-in: compares a real checkpoint's served answers with ModelScope's own pipeline. Run "
    "OFA_REAL_CHECKPOINT=/path/to/modelscope/checkpoint/dir .venv/bin/python -m pytest -q "
    "tests/test_real_checkpoint.py (a checkpoint in ModelScope layout, with configuration.json; "
    "ModelScope runs in OFA_REFERENCE_PYTHON, default .venv-ref/bin/python, which "
    "`make reference-env` creates; OFA_REAL_CASES sets the number of cases, default 12)")

pytestmark = pytest.mark.skipif(not os.environ.get("OFA_REAL_CHECKPOINT"), reason=HOW_TO_RUN)

CLIENTS = {   # task -> (module, class) of its client
    "visual-entailment": ("ofa_triton.tasks.visual_entailment.client", "VisualEntailmentClient"),
    "image-captioning": ("ofa_triton.tasks.image_captioning.client", "ImageCaptionClient"),
    "visual-question-answering": ("ofa_triton.tasks.visual_question_answering.client",
                                  "VisualQuestionAnsweringClient"),
    "visual-grounding": ("ofa_triton.tasks.visual_grounding.client", "VisualGroundingClient"),
}


def reference_python() -> Path:
    configured = os.environ.get("OFA_REFERENCE_PYTHON", DEFAULT_REFERENCE_PYTHON)
    path = Path(configured)
    return path if path.is_absolute() else ROOT / path


def case_count() -> int:
    text = os.environ.get("OFA_REAL_CASES", str(DEFAULT_CASES))
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        pytest.fail(f"OFA_REAL_CASES must be a positive number of cases, not {text!r}")
    return count


def select_cases(task: str, count: int) -> list[dict]:
    """The first ``count`` cases of the golden corpus for ``task`` whose text is not blank
    (all of them if fewer): {"name", "image", "text", "text2"}."""
    from tests.golden.cases import build_cases, grounding_cases, image_names, vqa_cases

    if task == "visual-entailment":
        cases = [{"name": c.name, "image": c.image, "text": c.hypothesis, "text2": c.premise}
                 for c in build_cases()]
    elif task == "image-captioning":
        names = image_names()   # image i*5 mod 29: every image once
        cases = [{"name": f"image{i:02d}", "image": names[(i * 5) % len(names)], "text": None,
                  "text2": None} for i in range(len(names))]
    else:
        source = vqa_cases() if task == "visual-question-answering" else grounding_cases()
        cases = [{"name": c.name, "image": c.image, "text": c.text, "text2": None}
                 for c in source]
    cases = [c for c in cases if c["text"] is None or c["text"].strip()]
    return cases[:count]


def _comparable(request: dict) -> dict:
    """A request without where its images were written."""
    return {key: value for key, value in request.items() if key != "images_dir"}


def start_reference(checkpoint: Path, request: dict, work: Path):
    """ModelScope's answers: (answers path, None) when OFA_REAL_REFERENCE_ANSWERS holds the
    answers to this request, else (answers path, the reference subprocess, started)."""
    kept = os.environ.get("OFA_REAL_REFERENCE_ANSWERS")
    out = Path(kept) if kept else work / "reference_answers.json"
    if kept and out.is_file():
        recorded = json.loads(out.read_text("utf-8"))
        if _comparable(recorded.get("request", {})) != _comparable(request):
            pytest.fail(f"{out} (OFA_REAL_REFERENCE_ANSWERS) holds ModelScope's answers for "
                        "other checkpoint files or other cases; delete it to make them anew")
        return out, None
    python = reference_python()
    if not python.is_file():
        pytest.fail(f"no reference environment at {python}: run `make reference-env` (about "
                    "10 minutes, 6 GB), or point OFA_REFERENCE_PYTHON at a python that has "
                    "ModelScope's OFA (export/reference/requirements.txt)")
    cases_path = work / "cases.json"
    cases_path.write_text(json.dumps(request, indent=1, ensure_ascii=False), encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    log = open(work / "reference.log", "wb")
    process = subprocess.Popen([str(python), str(REFERENCE_SCRIPT), str(checkpoint),
                                str(cases_path), str(out)], cwd=ROOT, stdout=log,
                               stderr=subprocess.STDOUT)
    log.close()
    return out, process


def finish_reference(out: Path, process, work: Path) -> dict:
    if process is not None:
        try:
            code = process.wait(REFERENCE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = "timeout"
        if code != 0:
            log = (work / "reference.log").read_text(errors="replace")
            lines = [line for line in log.splitlines() if not line.startswith("DEBUG:")]
            pytest.fail(f"ModelScope's pipeline (tests/golden/reference_answers.py) failed "
                        f"({code}); its output, without DEBUG lines:\n"
                        + "\n".join(lines[-60:]))
    return json.loads(out.read_text("utf-8"))


def served_answers(task: str, url: str, cases: list[dict], images: dict[str, Path]) -> list:
    import importlib

    from ofa_triton.triton_config import ServingOptions

    module, name = CLIENTS[task]
    client_class = getattr(importlib.import_module(module), name)
    model = ServingOptions().names(task).ensemble
    with client_class(url, "grpc", model_name=model) as client:
        if task == "visual-entailment":
            return client.predict_many([{"image": images[c["image"]].read_bytes(),
                                         "hypothesis": c["text"], "premise": c["text2"]}
                                        for c in cases], concurrency=CONCURRENCY,
                                       return_exceptions=True)
        if task == "image-captioning":
            return client.caption_many([images[c["image"]].read_bytes() for c in cases],
                                       concurrency=CONCURRENCY, return_exceptions=True)
        if task == "visual-question-answering":
            return client.answer_many([{"image": images[c["image"]].read_bytes(),
                                        "question": c["text"]} for c in cases],
                                      concurrency=CONCURRENCY, return_exceptions=True)
        return client.ground_many([{"image": images[c["image"]].read_bytes(), "text": c["text"]}
                                   for c in cases], concurrency=CONCURRENCY,
                                  return_exceptions=True)


def _beam_margin(expected: dict) -> str:
    hypotheses = expected.get("hypotheses") or []
    if len(hypotheses) < 2:
        return "ModelScope finished one hypothesis"
    return (f"ModelScope's two best finished hypotheses are "
            f"{hypotheses[0]['score'] - hypotheses[1]['score']:.2e} apart")


def compare(task: str, cases: list[dict], reference: dict,
            served: list) -> tuple[list[str], dict]:
    """Every mismatch, described; and the largest differences seen."""
    from ofa_triton.tasks.visual_entailment.labels import ANSWER_TO_LABEL

    problems, largest = [], {}
    for case, expected, got in zip(cases, reference["cases"], served):
        where = f"{expected['name']} ({expected['image']}"
        where += f", {case['text'][:40]!r})" if case["text"] is not None else ")"
        if isinstance(got, Exception):
            problems.append(f"{where}: the service failed: {got}")
            continue
        if task == "visual-entailment":
            probabilities = expected["probabilities"]
            for answer, want in zip(reference["answers"], probabilities):
                value = got.probabilities[ANSWER_TO_LABEL[answer]]
                largest["probability"] = max(largest.get("probability", 0.0), abs(value - want))
                if abs(value - want) > PROBABILITY_TOLERANCE:
                    problems.append(f"{where}: P({answer}) {value:.6f}, ModelScope {want:.6f} "
                                    f"(tolerance {PROBABILITY_TOLERANCE})")
            if abs(got.confidence - expected["score"]) > PROBABILITY_TOLERANCE:
                problems.append(f"{where}: confidence {got.confidence:.6f}, ModelScope's score "
                                f"{expected['score']:.6f}")
            best, second = sorted(probabilities)[:-3:-1]
            if best - second > 2 * PROBABILITY_TOLERANCE and \
                    got.label != ANSWER_TO_LABEL[expected["answer"]]:
                problems.append(f"{where}: label {got.label!r}, ModelScope "
                                f"{expected['answer']!r} ({ANSWER_TO_LABEL[expected['answer']]})")
        elif task == "visual-grounding":
            diff = max(abs(a - b) for a, b in zip(got, expected["box"]))
            largest["box_px"] = max(largest.get("box_px", 0.0), diff)
            if diff > BOX_TOLERANCE:
                problems.append(f"{where}: box "
                                f"{[round(v, 3) for v in got]}, ModelScope "
                                f"{[round(v, 3) for v in expected['box']]} (tolerance "
                                f"{BOX_TOLERANCE} px; {_beam_margin(expected)})")
        else:
            want = expected["caption"] if task == "image-captioning" else expected["answer"]
            if got != want:
                margin = _beam_margin(expected) if "hypotheses" in expected else \
                    f"ModelScope's answer probability {expected.get('score')}"
                problems.append(f"{where}: {got!r}, ModelScope {want!r} ({margin})")
    if len(served) != len(reference["cases"]):
        problems.append(f"{len(served)} answers for {len(reference['cases'])} cases")
    return problems, largest


def test_served_answers_equal_modelscopes_pipeline(tmp_path):
    from ofa_triton.checkpoint import open_checkpoint
    from ofa_triton.export import export_repository
    from tests.conftest import start_triton
    from tests.golden.cases import write_images

    started = time.monotonic()
    directory = Path(os.environ["OFA_REAL_CHECKPOINT"]).expanduser()
    if not directory.is_dir():
        pytest.fail(f"OFA_REAL_CHECKPOINT={directory} is not a directory: download the "
                    "checkpoint first (for example with modelscope's snapshot_download) and "
                    "point OFA_REAL_CHECKPOINT at the directory")
    checkpoint = open_checkpoint(directory)
    if checkpoint.layout != "modelscope":
        pytest.fail(f"{checkpoint.directory} has no configuration.json: ModelScope's pipeline "
                    "needs a checkpoint in ModelScope layout (it reads the task and settings "
                    "from configuration.json)")
    task = checkpoint.task.name
    images = write_images(tmp_path / "images")
    cases = select_cases(task, case_count())
    request = {"task": task, "images_dir": str(tmp_path / "images"),
               "checkpoint_sha256": checkpoint.file_hashes(), "cases": cases}

    # ModelScope answers in its own environment while this one exports and serves.
    answers_path, reference_process = start_reference(checkpoint.directory, request, tmp_path)
    try:
        export_started = time.monotonic()
        record = export_repository(checkpoint.directory, tmp_path / "repository")
        export_s = time.monotonic() - export_started
        if reference_process is not None and reference_process.poll() not in (None, 0):
            finish_reference(answers_path, reference_process, tmp_path)   # fails, says why
        assert record["export"]["task"] == task
        assert (record["export"]["runtime"], record["export"]["precision"]) == \
            ("onnxruntime", "fp32")
        assert record["source"]["sha256"] == request["checkpoint_sha256"]

        with start_triton(tmp_path / "repository", tmp_path) as server:
            server.wait_ready(READY_TIMEOUT_S)
            serve_started = time.monotonic()
            served = served_answers(task, server.grpc_url, cases, images)
            serve_s = time.monotonic() - serve_started
        reference = finish_reference(answers_path, reference_process, tmp_path)
    finally:
        if reference_process is not None and reference_process.poll() is None:
            reference_process.kill()      # this test failed first: stop ModelScope's run
            reference_process.wait()
    assert [c["name"] for c in reference["cases"]] == [c["name"] for c in cases]
    assert [c["image_sha256"] for c in reference["cases"]] == [
        hashlib.sha256(images[c["image"]].read_bytes()).hexdigest() for c in cases]

    problems, largest = compare(task, cases, reference, served)
    print(f"\n{task}: {len(cases)} cases, {len(problems)} mismatches; largest differences "
          f"{largest or 'none (exact answers)'}; export {export_s:.0f}s, served answers "
          f"{serve_s:.1f}s, ModelScope {reference.get('seconds')}, total "
          f"{time.monotonic() - started:.0f}s; ModelScope {reference['reference_versions']}")
    assert not problems, (f"{len(problems)} of {len(cases)} served answers differ from "
                          f"ModelScope's pipeline ({checkpoint.directory}, {task}):\n"
                          + "\n".join(problems))
