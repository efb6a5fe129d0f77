"""The model repository on a real tritonserver, over HTTP and gRPC with tritonclient."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from ofa_triton.client import PredictionError
from ofa_triton.tasks.visual_entailment.client import VisualEntailmentClient
from ofa_triton.tasks.visual_entailment.labels import ANSWER_TO_LABEL, LABELS
from ofa_triton.server import free_port
from tests.conftest import PROBABILITY_TOLERANCE, assert_answers_match_goldens

PROTOCOLS = ("http", "grpc")


def _client(server, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    return VisualEntailmentClient(url, protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ensemble_answers_like_modelscope(triton_server, goldens_by_name, golden_images,
                                          protocol):
    """The tiny checkpoint's goldens; the variant checkpoint's are checked in
    test_many_models.py, where it is served beside this one."""
    assert_answers_match_goldens(_client(triton_server, protocol), goldens_by_name["tiny"],
                                 golden_images)


def test_public_contract_shapes_and_types(triton_server):
    client = httpclient.InferenceServerClient(triton_server.http_url)
    metadata = client.get_model_metadata("ofa_visual_entailment")
    inputs = {i["name"]: (i["datatype"], i["shape"]) for i in metadata["inputs"]}
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]}
    assert inputs == {"image": ("BYTES", [-1, 1]), "hypothesis": ("BYTES", [-1, 1]),
                      "premise": ("BYTES", [-1, 1])}
    assert outputs == {"label": ("BYTES", [-1, 1]), "confidence": ("FP32", [-1, 1]),
                       "probabilities": ("FP32", [-1, 3])}
    config = client.get_model_config("ofa_visual_entailment")
    assert config["max_batch_size"] > 0
    assert [i["optional"] for i in config["input"]] == [False, False, True]


def test_a_client_batch_of_several_rows(triton_server, golden_images):
    """One request carrying 3 rows (batch dimension 3) is answered row by row."""
    client = httpclient.InferenceServerClient(triton_server.http_url)
    image = golden_images["photo_640x480.jpg"].read_bytes()
    tensors = {"image": [image] * 3,
               "hypothesis": [b"a dog", b"a man rides a horse", b"two cats"]}
    inputs = []
    for name, values in tensors.items():
        tensor = httpclient.InferInput(name, [3, 1], "BYTES")
        tensor.set_data_from_numpy(np.array(values, dtype=np.object_).reshape(3, 1))
        inputs.append(tensor)
    result = client.infer("ofa_visual_entailment", inputs)
    assert result.as_numpy("probabilities").shape == (3, 3)
    single = VisualEntailmentClient(triton_server.http_url).predict(image, "two cats")
    assert np.allclose(result.as_numpy("probabilities")[2],
                       [single.probabilities[l] for l in LABELS], atol=1e-5)


def test_empty_and_absent_premise_are_the_same(triton_server, golden_images):
    client = VisualEntailmentClient(triton_server.http_url)
    image = golden_images["photo_320x240.webp"].read_bytes()
    absent = client.predict(image, "people are walking")
    empty = client.predict(image, "people are walking", premise="")
    assert absent == empty


def _raw_request(protocol, url, tensors):
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(url)
    inputs = []
    for name, value in tensors.items():
        tensor = module.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))
        inputs.append(tensor)
    return client.infer("ofa_visual_entailment", inputs)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mixed_valid_and_invalid_requests_in_shared_batches(triton_server, golden_images,
                                                            goldens_by_name, protocol):
    """Sent concurrently so that they share dynamic batches (ofa_preprocess runs fewer
    executions than inferences): every valid request gets its golden answer, every invalid
    one of the bad-input corpus (tests/bad_inputs.py) its own INVALID_ARG error naming the
    problem, and no Python stub crashes or restarts."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.bad_inputs import INVALID_ARG, INVALID_IMAGES, INVALID_TEXTS, stub_trouble

    goldens = goldens_by_name["tiny"]
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    valid = [(c, {"image": golden_images[c["image"]].read_bytes(),
                  "hypothesis": c["hypothesis"].encode()})
             for c in goldens.cases if not c["premise"] and c["hypothesis"].strip()][:24]
    photo = golden_images["photo_640x480.jpg"].read_bytes()
    invalid = [({"image": make(), "hypothesis": b"a dog"}, fragment)
               for make, fragment in INVALID_IMAGES.values()]
    invalid += [({"image": photo, "hypothesis": hypothesis,
                  **({} if premise is None else {"premise": premise})}, fragment)
                for hypothesis, premise, fragment in INVALID_TEXTS.values()]
    jobs = [("valid", case, tensors) for case, tensors in valid] + \
           [("invalid", expected, tensors) for tensors, expected in invalid * 2]
    order = np.random.default_rng(0).permutation(len(jobs))

    def send(job):
        kind, expected, tensors = job
        try:
            return kind, expected, _raw_request(protocol, url, tensors), None
        except Exception as error:
            return kind, expected, None, error

    stats_client = httpclient.InferenceServerClient(triton_server.http_url)

    def preprocess_counts():
        stats = stats_client.get_inference_statistics("ofa_preprocess")["model_stats"][0]
        return stats["inference_count"], stats["execution_count"]

    log_mark, before = len(triton_server.log()), preprocess_counts()
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(send, [jobs[i] for i in order]))
    after = preprocess_counts()
    for kind, expected, result, error in outcomes:
        if kind == "valid":
            assert error is None, error
            label = result.as_numpy("label")[0, 0].decode()
            assert label == ANSWER_TO_LABEL[expected["answer"]], expected["name"]
            probabilities = dict(zip(LABELS, result.as_numpy("probabilities")[0]))
            for answer, probability in zip(goldens.answers, expected["probabilities"]):
                assert abs(probabilities[ANSWER_TO_LABEL[answer]] - probability) <= \
                    PROBABILITY_TOLERANCE, expected["name"]
        else:
            assert result is None
            assert str(error.status()) == INVALID_ARG[protocol], (error.status(), str(error))
            assert expected in str(error)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert executions < inferences, f"{executions} executions for {inferences} inferences"
    assert stats_client.is_server_ready()
    assert not stub_trouble(triton_server.log()[log_mark:])


def test_dynamic_batches_really_form(triton_server, golden_images):
    client = httpclient.InferenceServerClient(triton_server.http_url)

    def counts():
        stats = client.get_inference_statistics("ofa_encoder_decoder")["model_stats"][0]
        return stats["inference_count"], stats["execution_count"]

    before = counts()
    image = golden_images["photo_640x480.jpg"].read_bytes()
    VisualEntailmentClient(triton_server.http_url).predict_many(
        [{"image": image, "hypothesis": f"request number {i}"} for i in range(64)],
        concurrency=32)
    after = counts()
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 64
    assert executions < inferences, f"{executions} executions for {inferences} inferences"


def test_cli_predict_prints_json(triton_server, golden_images):
    image = golden_images["photo_640x480.jpg"]
    for protocol, url in (("http", triton_server.http_url), ("grpc", triton_server.grpc_url)):
        result = subprocess.run(
            [sys.executable, "-m", "ofa_triton.cli", "predict", "--url", url, "--protocol",
             protocol, "--image", str(image), "--hypothesis", "a man rides a horse"],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["label"] in LABELS
        assert abs(sum(answer["probabilities"].values()) - 1) < 1e-5


def test_cli_predict_reports_a_refused_request(triton_server, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    result = subprocess.run(
        [sys.executable, "-m", "ofa_triton.cli", "predict", "--url", triton_server.http_url,
         "--image", str(bad), "--hypothesis", "x"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert json.loads(result.stdout)["status"] == "400"


def test_python_client_raises_prediction_error_with_status(triton_server):
    with pytest.raises(PredictionError) as error:
        VisualEntailmentClient(triton_server.grpc_url, "grpc").predict(b"\x00" * 10, "x")
    assert error.value.status == "StatusCode.INVALID_ARGUMENT"


def health_of(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return 0, {}


def tritonservers_on(http_port: int) -> list[int]:
    """The pids of tritonserver processes started with this HTTP port."""
    found = subprocess.run(["pgrep", "-f", f"tritonserver .*--http-port={http_port} "],
                           capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


# Ctrl-C in a terminal signals the whole foreground process group; docker stop and systemd
# send SIGTERM to the one process. Either way serve stops tritonserver (its own session) once.
@pytest.mark.parametrize("signum, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c", "sigterm"])
def test_serve_runs_in_the_foreground_and_stops_cleanly(exported_repositories, signum,
                                                        to_group):
    """``ofa-triton serve``: the server, its watchdog and the service's /ready and /live."""
    http_port, health_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ofa_triton.cli", "serve", "--repository",
         str(exported_repositories["tiny"]), "--host", "127.0.0.1", "--http-port",
         str(http_port), "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
         "--health-port", str(health_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready_url = f"http://127.0.0.1:{health_port}/ready"
        deadline = time.monotonic() + 120
        while health_of(ready_url)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert health_of(ready_url) == (200, {
            "ready": True, "live": True, "reasons": [], "watchdog": "on",
            "ensembles": {"ofa_visual_entailment": True}})
        assert health_of(f"http://127.0.0.1:{health_port}/live")[0] == 200
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        assert client.is_model_ready("ofa_visual_entailment")
        # An open keep-alive connection would hold the shutdown for Triton's exit timeout.
        client.close()
        [triton_pid] = tritonservers_on(http_port)
        if to_group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        code = process.wait(60)
        assert code == 0, process.stdout.read().decode(errors="replace")[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        for pid in tritonservers_on(http_port):
            os.kill(pid, signal.SIGKILL)
    assert tritonservers_on(http_port) == []
    output = process.stdout.read().decode(errors="replace")
    assert (f"ofa-triton serve: {signal.Signals(signum).name}: stopping tritonserver cleanly "
            "(again to kill it)") in output
    assert "successfully unloaded" in output or "All models are stopped" in output
