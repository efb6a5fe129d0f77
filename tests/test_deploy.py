"""Versions, hot swap and rollback on a real tritonserver, under concurrent load over HTTP and
gRPC: no request fails, answers switch to the deployed version's, and a broken version
changes nothing: it fails its pre-flight in a throwaway server, so the live server never
lists it and its strict readiness stays true.

Each version's expected answer is computed in-process from its own exported files (the
preprocessor, the encoder-decoder runtime and the label mapping the Triton models use);
answers are compared within 1e-5. Version 2 runs the PyTorch runtime, version 1 onnxruntime:
a deploy switches runtimes as it switches weights.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from ofa_triton.tasks.visual_entailment.client import VisualEntailmentClient
from ofa_triton.deploy import DeployError, deploy, rollback
from ofa_triton.export import export_repository
from ofa_triton.tasks.visual_entailment.labels import LABELS, scores_to_outputs
from ofa_triton.manifest import ALLOW_MISMATCH_ENV, read_manifest, write_manifest
from ofa_triton.tasks.visual_entailment.preprocessing import VisualEntailmentPreprocessor, stack
from ofa_triton.runtime import RuntimeRecord, open_encoder_decoder
from ofa_triton.server import ServerOptions, TritonServer, admin_headers
from ofa_triton.settings import ServingSettings
from ofa_triton.tiny_checkpoint import generate_tiny_checkpoint
from ofa_triton.triton_config import ServedVersions, read_served_versions

ANSWER_TOLERANCE = 1e-5
ADMIN_KEY = "deploy-test-key"
STEPS = ("ofa_preprocess", "ofa_encoder_decoder", "ofa_postprocess")
HYPOTHESIS, PREMISE = "two people walk down a street", "a city scene"


def expected_probabilities(repository: Path, version: int, image: bytes) -> np.ndarray:
    """The version's answer, computed in-process from its exported files."""
    preprocessor = VisualEntailmentPreprocessor.from_directory(
        repository / "ofa_preprocess" / str(version))
    batch = stack([preprocessor(image, HYPOTHESIS, PREMISE)])
    scores = open_encoder_decoder(repository / "ofa_encoder_decoder" / str(version))(batch)
    answers = ServingSettings.read(repository / "ofa_postprocess" / str(version)).task.answers
    return scores_to_outputs(scores, answers)[2][0]


class Traffic:
    """Workers sending the same request in a loop over HTTP and gRPC, recording each
    outcome with the time it was sent."""

    def __init__(self, server: TritonServer, image: bytes, workers_per_protocol: int = 2):
        self.image = image
        self.outcomes: list[tuple[float, object]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, args=(server, protocol), daemon=True)
                         for protocol in ("http", "grpc") for _ in range(workers_per_protocol)]

    def _work(self, server: TritonServer, protocol: str) -> None:
        url = server.http_url if protocol == "http" else server.grpc_url
        with VisualEntailmentClient(url, protocol) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    result = client.predict(self.image, HYPOTHESIS, PREMISE)
                    outcome = np.array([result.probabilities[label] for label in LABELS])
                except Exception as error:  # every failure is a test failure, kept to report
                    outcome = f"{protocol}: {type(error).__name__}: {error}"
                self.outcomes.append((sent, outcome))

    def __enter__(self) -> "Traffic":
        for thread in self._threads:
            thread.start()
        time.sleep(1.0)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def wait_for(self, start: float, count: int = 3, timeout: float = 60.0) -> None:
        """Until ``count`` requests sent after ``start`` have their outcome (on a busy machine
        a request can take seconds)."""
        deadline = time.monotonic() + timeout
        while len(self.since(start)) < count and time.monotonic() < deadline:
            time.sleep(0.1)

    def since(self, start: float) -> list[object]:
        return [outcome for sent, outcome in self.outcomes if sent >= start]


class Probe:
    """What a platform's health checks see while a deploy runs: the server's strict readiness
    (``/v2/health/ready``'s status) and every (model, version, state) in its model index,
    polled every 50 ms."""

    def __init__(self, server: TritonServer):
        self.url = server.http_url
        self.readiness: list[int | str] = []
        self.listed: set[tuple[str, str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        index = httpclient.InferenceServerClient(self.url)
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=5) as r:
                    self.readiness.append(r.status)
            except urllib.error.HTTPError as error:
                self.readiness.append(error.code)
            except OSError as error:
                self.readiness.append(f"{type(error).__name__}: {error}")
            self.listed |= {(e["name"], e["version"], e.get("state", "")) for e in
                            index.get_model_repository_index(
                                headers=admin_headers("http", ADMIN_KEY))}
            time.sleep(0.05)
        index.close()

    def __enter__(self) -> "Probe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


def _check_preflight_log(error: pytest.ExceptionInfo, model: str) -> None:
    """The failed pre-flight's error names the throwaway server's log, which says why; then
    it is removed (the deploy keeps it for the operator)."""
    log = Path(re.search(r"its log: (\S+tritonserver\.log)", str(error.value)).group(1))
    assert f"failed to load '{model}'" in log.read_text(errors="replace")
    assert not (log.parent / "repository").exists()
    shutil.rmtree(log.parent)


def _wait_server_ready(server: TritonServer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not server.is_ready():
        assert time.monotonic() < deadline, f"strict readiness still false after {timeout} s"
        time.sleep(0.1)


def _write_identity_graph(path: Path) -> None:
    """A valid ONNX graph that is not OFA's: it loads, and fails on OFA's inputs."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "not_ofa",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _matches(outcome: object, expected: np.ndarray) -> bool:
    return isinstance(outcome, np.ndarray) and np.abs(outcome - expected).max() <= ANSWER_TOLERANCE


@pytest.fixture(scope="module")
def versions(tiny_checkpoint, tmp_path_factory):
    """A repository with version 1 (the tiny checkpoint); a second checkpoint of the same
    shapes with other weights, for versions 2 and up."""
    root = tmp_path_factory.mktemp("deploy")
    repository = root / "repository"
    export_repository(tiny_checkpoint, repository, progress=lambda _: None)
    other = generate_tiny_checkpoint(root / "other", seed=2)
    return repository, other, root


def test_export_adds_versions_without_changing_what_serves(versions, tmp_path):
    repository, other, _ = versions
    copy = tmp_path / "repository"
    subprocess.run(["cp", "-r", str(repository), str(copy)], check=True)
    with pytest.raises(DeployError, match="no previous version"):
        rollback(copy, progress=lambda _: None)
    record = export_repository(other, copy, progress=lambda _: None)
    assert record["export"]["version"] == 2
    assert read_served_versions(copy, "ofa_visual_entailment") == ServedVersions(1)
    with pytest.raises(ValueError, match="version 2 of ofa_visual_entailment already exists"):
        export_repository(other, copy, version=2, progress=lambda _: None)
    with pytest.raises(ValueError, match="differs in patch_image_size.*--name-prefix"):
        export_repository(other, copy, patch_image_size=96, progress=lambda _: None)
    # Without a server, deploy and rollback rewrite the configs for the next start, after a
    # pre-flight unless told not to.
    lines = []
    deploy(copy, 2, preflight=False, progress=lines.append)
    assert any("pre-flight skipped" in line for line in lines), lines
    assert read_served_versions(copy, "ofa_visual_entailment") == ServedVersions(2, previous=1)
    assert "versions: [ 2 ]" in (copy / "ofa_preprocess" / "config.pbtxt").read_text()
    cli = subprocess.run([sys.executable, "-m", "ofa_triton.cli", "rollback",
                          "--repository", str(copy)], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert "pre-flight passed" in cli.stdout, cli.stdout
    assert read_served_versions(copy, "ofa_visual_entailment") == ServedVersions(1, previous=2)
    text = (copy / "ofa_visual_entailment" / "config.pbtxt").read_text()
    assert text.count("model_version: 1") == 3

    # A version whose warmup sample is broken (and re-recorded in its manifest, so that only
    # loading it tells): the pre-flight refuses it, files-only too, and the configs stay.
    for model in STEPS + ("ofa_visual_entailment",):
        subprocess.run(["cp", "-r", str(copy / model / "2"), str(copy / model / "3")],
                       check=True)
    postprocess = copy / "ofa_postprocess" / "3"
    (postprocess / "warmup" / "answer_scores").write_bytes(b"\0\0\0")
    write_manifest(postprocess, {k: v for k, v in read_manifest(postprocess).items()
                                 if k != "artifacts"})
    with pytest.raises(DeployError, match="(?s)pre-flight: version 3 of ofa_postprocess failed "
                       "to load.*failed its warmup sample.*still serves version 1") as error:
        deploy(copy, 3, progress=lambda _: None)
    _check_preflight_log(error, "ofa_postprocess")
    assert read_served_versions(copy, "ofa_visual_entailment") == ServedVersions(1, previous=2)


def test_deploy_and_rollback_under_load(versions, golden_images, monkeypatch):
    repository, other, root = versions
    monkeypatch.delenv(ALLOW_MISMATCH_ENV, raising=False)   # the live server's environment
    image = golden_images["photo_640x480.jpg"].read_bytes()
    expected = {1: expected_probabilities(repository, 1, image)}
    options = ServerOptions.loopback(repository, model_control="explicit", admin_key=ADMIN_KEY)
    with TritonServer(options, log_path=root / "server.log") as server:
        server.wait_ready()
        with Traffic(server, image) as traffic:
            # A new version, exported beside the one serving, serves nothing yet.
            export_repository(other, repository, runtime="torch", progress=lambda _: None)
            assert RuntimeRecord.read(repository / "ofa_encoder_decoder" / "2").runtime == "torch"
            expected[2] = expected_probabilities(repository, 2, image)
            assert np.abs(expected[2] - expected[1]).max() > 100 * ANSWER_TOLERANCE
            time.sleep(1.0)

            with pytest.raises(DeployError, match="admin"):
                deploy(repository, 2, url=server.http_url, progress=lambda _: None)
            marks = {"deploy": time.monotonic()}
            lines = []
            with Probe(server) as good:
                deploy(repository, 2, url=server.http_url, admin_key=ADMIN_KEY,
                       progress=lines.append)
            marks["deployed"] = time.monotonic()
            assert any(line.strip().startswith("pre-flight passed in") for line in lines), lines
            print(next(line.strip() for line in lines if "pre-flight passed" in line))
            # Pinned because the README says so: while the live server loads a version (and
            # unloads the old one), Triton's strict readiness is false, even for a good one;
            # the deploy returns once it is true again.
            assert 400 in good.readiness and server.is_ready(), good.readiness
            traffic.wait_for(marks["deployed"])

            # The CLI, as an operator runs it.
            marks["rollback"] = time.monotonic()
            cli = subprocess.run(
                [sys.executable, "-m", "ofa_triton.cli", "rollback", "--repository",
                 str(repository), "--url", server.http_url, "--admin-key-env", "DEPLOY_KEY"],
                capture_output=True, text=True, env={**os.environ, "DEPLOY_KEY": ADMIN_KEY})
            assert cli.returncode == 0, cli.stdout + cli.stderr
            assert "serves version 1" in cli.stdout and "pre-flight passed" in cli.stdout
            marks["rolled back"] = time.monotonic()
            traffic.wait_for(marks["rolled back"])

            # A corrupt artifact: refused by the manifest check before anything changes.
            export_repository(other, repository, version=3, progress=lambda _: None)
            graph = repository / "ofa_encoder_decoder" / "3" / "model.onnx"
            data = bytearray(graph.read_bytes())
            data[len(data) // 2] ^= 0xFF
            graph.write_bytes(bytes(data))
            with pytest.raises(DeployError, match="model.onnx: sha256 differs"):
                deploy(repository, 3, url=server.http_url, admin_key=ADMIN_KEY,
                       progress=lambda _: None)

            # A version whose files match their manifest and load, but cannot answer (a valid
            # ONNX graph of something else): it fails its warmup in the pre-flight's throwaway
            # server, so the live server never loads it: its index never lists it and its
            # strict readiness stays true throughout (a platform's health check sees nothing).
            export_repository(other, repository, version=4, progress=lambda _: None)
            graph_dir = repository / "ofa_encoder_decoder" / "4"
            _write_identity_graph(graph_dir / "model.onnx")
            write_manifest(graph_dir, {k: v for k, v in read_manifest(graph_dir).items()
                                       if k != "artifacts"})
            _wait_server_ready(server)
            with Probe(server) as bad:
                with pytest.raises(DeployError, match="(?s)pre-flight: version 4 of "
                                   "ofa_encoder_decoder failed to load.*failed its warmup "
                                   "sample.*still serves version 1.*never saw version 4"
                                   ) as error:
                    deploy(repository, 4, url=server.http_url, admin_key=ADMIN_KEY,
                           progress=lambda _: None)
                time.sleep(1.0)
            _check_preflight_log(error, "ofa_encoder_decoder")
            assert len(bad.readiness) >= 20 and set(bad.readiness) == {200}, bad.readiness
            assert not [entry for entry in bad.listed if entry[1] == "4"], bad.listed
            assert {entry[0] for entry in bad.listed} >= set(STEPS), bad.listed
            assert read_served_versions(repository, "ofa_visual_entailment") == \
                ServedVersions(1, previous=2)
            assert server.process.poll() is None
            control = httpclient.InferenceServerClient(server.http_url)
            assert all(control.is_model_ready(name) for name in STEPS + ("ofa_visual_entailment",))
            assert control.is_server_ready()

            # What the pre-flight cannot catch: a version that loads here but not on the live
            # server, whose environment differs (here: the deploy's allows a package release
            # the version was not exported with, the server's does not). The deploy restores
            # what served; Triton keeps the failed version in its index, so strict readiness
            # stays false until a restart (pinned because the error and README say so).
            export_repository(other, repository, version=5, progress=lambda _: None)
            preprocess = repository / "ofa_preprocess" / "5"
            record = read_manifest(preprocess)
            write_manifest(preprocess, {**{k: v for k, v in record.items() if k != "artifacts"},
                                        "versions": {**record["versions"], "pillow": "1.0.0"}})
            monkeypatch.setenv(ALLOW_MISMATCH_ENV, "1")
            with pytest.raises(DeployError, match="(?s)version 5 of ofa_preprocess failed to "
                               "load on the live server.*still serves version 1.*refusing to "
                               "load.*it passed the pre-flight"):
                deploy(repository, 5, url=server.http_url, admin_key=ADMIN_KEY,
                       progress=lambda _: None)
            monkeypatch.delenv(ALLOW_MISMATCH_ENV)
            assert read_served_versions(repository, "ofa_visual_entailment") == \
                ServedVersions(1, previous=2)
            time.sleep(1.0)
            assert all(control.is_model_ready(name) for name in STEPS + ("ofa_visual_entailment",))
            assert not control.is_server_ready()

        errors = [o for _, o in traffic.outcomes if not isinstance(o, np.ndarray)]
        assert not errors, f"{len(errors)} of {len(traffic.outcomes)} failed: {errors[:3]}"
        assert all(_matches(o, expected[1]) or _matches(o, expected[2])
                   for _, o in traffic.outcomes), "an answer from neither version"
        # By the time each request was sent: before the deploy started, version 1; after it
        # returned, version 2; after the rollback returned, version 1 (during a switch, either).
        windows = ((0, marks["deploy"], 1), (marks["deployed"], marks["rollback"], 2),
                   (marks["rolled back"], float("inf"), 1))
        for start, end, version in windows:
            window = [o for sent, o in traffic.outcomes if start <= sent < end]
            assert len(window) >= 3, f"only {len(window)} requests between {start} and {end}"
            assert all(_matches(o, expected[version]) for o in window), \
                f"requests sent between {start} and {end} did not all get version {version}'s"
        index = httpclient.InferenceServerClient(server.http_url).get_model_repository_index(
            headers=admin_headers("http", ADMIN_KEY))
        for step in STEPS:   # the old version unloaded, the broken ones never loaded
            assert [e["version"] for e in index if e["name"] == step
                    and e.get("state") == "READY"] == ["1"], index
        # (The ensemble's own version is its newest directory, whatever its steps run: Triton
        # reloads it with each step, so it may be listed as 5.)
        assert not [e for e in index if e["name"] in STEPS and e["version"] == "4"], index
        assert [(e["name"], e["state"]) for e in index
                if e["name"] in STEPS and e["version"] == "5"] == \
            [("ofa_preprocess", "UNAVAILABLE")], index

    # The files say what serves: a restart (no model control) serves version 1 again, and the
    # broken versions 3, 4 and 5 are not even loaded.
    options = ServerOptions.loopback(repository)
    with TritonServer(options, log_path=root / "restart.log") as server:
        server.wait_ready()
        with VisualEntailmentClient(server.grpc_url, "grpc") as client:
            result = client.predict(image, HYPOTHESIS, PREMISE)
        assert _matches(np.array([result.probabilities[label] for label in LABELS]), expected[1])
