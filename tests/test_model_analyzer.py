"""The model-analyzer workspace (ofa_triton.model_analyzer): its wrappers start the bundled
tritonserver and perf_analyzer the way model-analyzer calls them, and its profile.yaml names
what exists. A full `model-analyzer profile` takes about 8 minutes on 2 cores; its recorded
run is in README.md ("Choose instance counts and batch sizes")."""

from __future__ import annotations

import subprocess
import time

import pytest
import yaml

from ofa_triton.model_analyzer import ModelAnalyzerError, composing_models, write_workspace
from ofa_triton.server import free_port

STEPS = ["ofa_preprocess", "ofa_encoder_decoder", "ofa_postprocess"]


@pytest.fixture(scope="module")
def workspace(exported_repositories, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("model-analyzer")
    return workdir, write_workspace(exported_repositories["tiny"], "ofa_visual_entailment",
                                    workdir)


def test_the_profile_names_the_ensemble_its_steps_and_files_that_exist(workspace):
    workdir, profile = workspace
    config = yaml.safe_load(profile.read_text())
    assert config["run_config_search_mode"] == "quick"     # brute refuses ensembles
    assert config["cpu_only_composing_models"] == STEPS
    assert list(config["profile_models"]) == ["ofa_visual_entailment"]
    for key in ("model_repository", "triton_server_path", "perf_analyzer_path"):
        assert (workdir / config[key]).exists(), key
    assert sorted(p.name for p in (workdir / "repository").iterdir()) == sorted(
        STEPS + ["ofa_visual_entailment"])
    data = config["profile_models"]["ofa_visual_entailment"]["perf_analyzer_flags"]
    assert (workdir / data["input-data"]).is_file()


def test_an_unknown_ensemble_is_named_with_those_there(exported_repositories, tmp_path):
    with pytest.raises(ModelAnalyzerError, match="has no ensemble 'nope'; it has "
                       "ofa_visual_entailment"):
        write_workspace(exported_repositories["tiny"], "nope", tmp_path)
    assert composing_models(exported_repositories["tiny"], "ofa_visual_entailment") == STEPS


def test_the_wrappers_serve_and_measure_as_model_analyzer_runs_them(workspace, tmp_path):
    """tritonserver.sh with the flags model-analyzer adds (explicit model control), the
    ensemble loaded through the repository API as model-analyzer does, then one
    perf_analyzer.sh measurement with the workspace's inputs."""
    import tritonclient.http as httpclient

    workdir, _ = workspace
    http, grpc, metrics = free_port(), free_port(), free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [str(workdir / "tritonserver.sh"), f"--model-repository={workdir / 'repository'}",
         "--model-control-mode=explicit", f"--http-port={http}", f"--grpc-port={grpc}",
         f"--metrics-port={metrics}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.is_server_live():
                    break
            except Exception:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (
                tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        client.load_model("ofa_visual_entailment")   # and its steps
        assert client.is_model_ready("ofa_visual_entailment")
        result = subprocess.run(
            [str(workdir / "perf_analyzer.sh"), "-m", "ofa_visual_entailment",
             "-u", f"127.0.0.1:{grpc}", "-i", "grpc",
             "--input-data", str(workdir / "inputs.json"), "--concurrency-range", "1:1",
             "--measurement-interval", "1000", "--stability-percentage", "100"],
            capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "Throughput:" in result.stdout
        client.close()
    finally:
        import os
        import signal

        os.killpg(server.pid, signal.SIGTERM)   # the wrapper exec'd tritonserver: same pid
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
        from ofa_triton.server import kill_leftover_stubs

        kill_leftover_stubs(server.pid)


def test_the_command_writes_the_workspace_and_says_how_to_run_it(exported_repositories,
                                                                 tmp_path):
    import sys

    command = [sys.executable, "-m", "ofa_triton.cli", "model-analyzer-config", "--repository",
               str(exported_repositories["tiny"]), "--output", str(tmp_path / "ws")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"model-analyzer profile -f {tmp_path / 'ws' / 'profile.yaml'}" in result.stdout
    wrong = subprocess.run(command + ["--model", "ofa_image_caption"], capture_output=True,
                           text=True, timeout=300)
    assert wrong.returncode == 2
    assert "has no ensemble 'ofa_image_caption'; it has ofa_visual_entailment" in wrong.stderr
