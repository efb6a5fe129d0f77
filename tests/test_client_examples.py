"""Every client example in clients/ runs against a real tritonserver serving the built-in
models, and answers what the project's own client answers for the same inputs.

Each example runs as a user would run it (``python clients/x.py --url ...``, from another
working directory, so that its default image is found from its own location) and prints JSON
lines; the test asks ``ofa_triton``'s clients the same questions and compares: the same label
and probabilities within 1e-5, the same caption and answer, the same box within 1e-3 pixel. A
new file in clients/ fails ``test_every_example_is_run_by_a_test`` until a test runs it.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import start_triton

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ROOT / "clients"
SAMPLE = ROOT / "examples" / "sample.jpg"
PROBABILITY_TOLERANCE = 1e-5
BOX_TOLERANCE = 1e-3   # pixels

# example file -> the test that runs it (filled by @runs below)
TESTED: dict[str, str] = {}


def runs(*examples: str):
    """Declares which clients/ files a test runs; run_example refuses any other."""
    def mark(test):
        for example in examples:
            TESTED[example] = test.__name__
        return test
    return mark


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The built-in repository (all four tasks; about 20 s to build), served for the module."""
    from ofa_triton.builtin import build_builtin_repository

    root = tmp_path_factory.mktemp("client-examples")
    repository = build_builtin_repository(root / "repository", root / "checkpoints",
                                          progress=lambda _: None)
    with start_triton(repository, root) as triton:
        triton.wait_ready()
        yield triton


@pytest.fixture(scope="module")
def reference(server):
    """What the project's own clients answer, over HTTP, memoized per input. Closed before the
    server stops: an open connection would hold its exit for Triton's exit timeout (30 s)."""
    clients = Reference(server.http_url)
    yield clients
    clients.close()


class Reference:
    def __init__(self, url: str):
        from ofa_triton.tasks.image_captioning.client import ImageCaptionClient
        from ofa_triton.tasks.visual_entailment.client import VisualEntailmentClient
        from ofa_triton.tasks.visual_grounding.client import VisualGroundingClient
        from ofa_triton.tasks.visual_question_answering.client import (
            VisualQuestionAnsweringClient)

        self.entailment = VisualEntailmentClient(url)
        self.captioning = ImageCaptionClient(url)
        self.vqa = VisualQuestionAnsweringClient(url)
        self.grounding = VisualGroundingClient(url)

    def close(self) -> None:
        for client in (self.entailment, self.captioning, self.vqa, self.grounding):
            client.close()

    @functools.cache
    def predict(self, hypothesis: str, premise: str | None):
        return self.entailment.predict(SAMPLE, hypothesis, premise=premise)

    @functools.cache
    def caption(self) -> str:
        return self.captioning.caption(SAMPLE)

    @functools.cache
    def answer(self, question: str) -> str:
        return self.vqa.answer(SAMPLE, question)

    @functools.cache
    def ground(self, text: str):
        return self.grounding.ground(SAMPLE, text)


def run_example(name: str, *args: str, cwd: Path) -> list[dict]:
    """``python clients/<name> args...`` from ``cwd``; its JSON lines."""
    assert name in TESTED, f"declare clients/{name} with @runs on the test that runs it"
    completed = subprocess.run([sys.executable, str(CLIENTS / name), *args], cwd=cwd,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, (
        f"clients/{name} exited with {completed.returncode}:\n{completed.stderr[-4000:]}")
    lines = [json.loads(line) for line in completed.stdout.splitlines() if line.strip()]
    assert lines, f"clients/{name} printed nothing"
    return lines


def assert_same_prediction(line: dict, reference: Reference) -> None:
    """An entailment answer an example printed against the project client's."""
    expected = reference.predict(line["hypothesis"], line["premise"] or None)
    assert line["label"] == expected.label, line
    assert abs(line["confidence"] - expected.confidence) <= PROBABILITY_TOLERANCE, line
    assert line["probabilities"].keys() == expected.probabilities.keys(), line
    for label, probability in expected.probabilities.items():
        assert abs(line["probabilities"][label] - probability) <= PROBABILITY_TOLERANCE, line


def entailment_statistics(server) -> tuple[int, int]:
    """(requests, rows) the public entailment model has answered so far."""
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(server.http_url) as client:
        stats = client.get_inference_statistics("ofa_visual_entailment")["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"]), int(stats["inference_count"])


@runs("entailment_http.py", "entailment_grpc.py")
@pytest.mark.parametrize("example, protocol", [("entailment_http.py", "http"),
                                               ("entailment_grpc.py", "grpc")])
def test_plain_tritonclient_single_request_and_client_side_batch(
        example, protocol, server, reference, tmp_path):
    url = server.http_url if protocol == "http" else server.grpc_url
    requests_before, rows_before = entailment_statistics(server)
    lines = run_example(example, "--url", url, cwd=tmp_path)
    requests_after, rows_after = entailment_statistics(server)

    single = [line for line in lines if line["request"] == "single"]
    batch = [line for line in lines if line["request"] == "batch"]
    assert len(single) == 1 and len(single) + len(batch) == len(lines)
    assert len(batch) >= 2
    assert [line["row"] for line in batch] == list(range(len(batch)))  # one answer per row
    # The batch went as one request of several rows: two requests in all, 1 + len(batch) rows.
    assert requests_after - requests_before == 2
    assert rows_after - rows_before == 1 + len(batch)
    for line in lines:
        assert_same_prediction(line, reference)


@runs("entailment_asyncio.py", "entailment_in_flight.py")
@pytest.mark.parametrize("example", ["entailment_asyncio.py", "entailment_in_flight.py"])
def test_many_requests_in_flight(example, server, reference, tmp_path):
    requests_before, _ = entailment_statistics(server)
    lines = run_example(example, "--url", server.http_url, "--requests", "12",
                        "--concurrency", "4", cwd=tmp_path)
    requests_after, _ = entailment_statistics(server)

    assert [line["index"] for line in lines] == list(range(12))   # every answer, in order
    assert requests_after - requests_before == 12                 # one request each
    assert len({line["hypothesis"] for line in lines}) > 1
    for line in lines:
        assert_same_prediction(line, reference)


@runs("generating_tasks_http.py")
def test_plain_tritonclient_generating_tasks(server, reference, tmp_path):
    lines = run_example("generating_tasks_http.py", "--url", server.http_url, cwd=tmp_path)
    by_task: dict[str, list[dict]] = {}
    for line in lines:
        by_task.setdefault(line["task"], []).append(line)
    assert sorted(by_task) == ["answer", "caption", "ground"]

    [caption] = by_task["caption"]
    assert caption["caption"] == reference.caption()
    answers = by_task["answer"]
    assert len(answers) >= 2
    assert [line["row"] for line in answers] == list(range(len(answers)))
    for line in answers:
        assert line["answer"] == reference.answer(line["question"]), line
    [ground] = by_task["ground"]
    expected = reference.ground(ground["text"])
    assert len(ground["box"]) == 4
    assert all(abs(got - want) <= BOX_TOLERANCE for got, want in zip(ground["box"], expected))


@runs("ofa_client_all_tasks.py")
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_project_client_all_tasks(protocol, server, reference, tmp_path):
    url = server.http_url if protocol == "http" else server.grpc_url
    lines = run_example("ofa_client_all_tasks.py", "--url", url, "--protocol", protocol,
                        cwd=tmp_path)
    tasks = [line["task"] for line in lines]
    assert set(tasks) == {"entailment", "caption", "answer", "ground"}
    assert tasks.count("entailment") >= 2
    for line in lines:
        if line["task"] == "entailment":
            assert_same_prediction(line, reference)
        elif line["task"] == "caption":
            assert line["caption"] == reference.caption()
        elif line["task"] == "answer":
            assert line["answer"] == reference.answer(line["question"])
        else:
            expected = reference.ground(line["text"])
            assert all(abs(g - w) <= BOX_TOLERANCE for g, w in zip(line["box"], expected))


def examples() -> list[str]:
    return sorted(path.name for path in CLIENTS.glob("*.py"))


def test_every_example_is_run_by_a_test():
    assert examples(), "clients/ has no examples"
    untested = sorted(set(examples()) - set(TESTED))
    assert not untested, f"no test runs these client examples: {untested}"
    assert not set(TESTED) - set(examples()), "a test names an example that does not exist"


@pytest.mark.parametrize("example", examples())
def test_example_says_what_it_shows_and_how_to_run_it(example):
    source = (CLIENTS / example).read_text("utf-8")
    docstring = ast.get_docstring(ast.parse(source))
    assert docstring, f"clients/{example} has no module docstring"
    assert f"clients/{example}" in docstring, f"clients/{example}'s docstring shows no command"
    assert "--url" in source and "--image" in source
    assert f"clients/{example}" in (CLIENTS / "README.md").read_text("utf-8"), (
        f"clients/README.md does not list {example}")
