"""The device kit (benchmarks/device/kit.py), built for real (it downloads about 35 MB of
wheels) and used the way the GPU machine uses it: unpacked, then the tiny export served by the
kit's tritonserver and measured by the kit's perf_analyzer, started from the kit's Python.

With a Python 3.12 here, also the GPU machine's situation itself: a Python 3.12 environment
whose own numpy is 2.x, in which the Triton 2.51 stub crashes on BYTES inputs; the kit's Python
puts its numpy 1.26.4 in front, stubs included."""

from __future__ import annotations

import datetime
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.device.kit import (KIT_FILE, KIT_LIMIT_BYTES, PERF_ANALYZER_ARCHIVE, ROOT,
                                   KitError, unpack_kit)
from benchmarks.run import commit
from ofa_triton.tasks.visual_entailment.labels import ANSWER_TO_LABEL
from ofa_triton.manifest import sha256_file
from tests.conftest import DEVICE_KIT_BUILT_BY, PROBABILITY_TOLERANCE

pytestmark = pytest.mark.slow

BUILT_BY = DEVICE_KIT_BUILT_BY


@pytest.fixture(scope="module")
def kit(built_device_kit) -> tuple[Path, dict]:
    return built_device_kit


@pytest.fixture(scope="module")
def unpacked(kit, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    dest = tmp_path_factory.mktemp("unpacked")
    return dest, unpack_kit(kit[0], dest, progress=lambda _: None)


def _with(environment: dict[str, str], dropped: tuple[str, ...] = ()) -> dict[str, str]:
    env = {**os.environ, **environment}
    for name in dropped:
        env.pop(name, None)
    return env


def test_the_kit_fits_the_budget_and_records_what_it_holds(kit):
    directory, record = kit
    on_disk = {path.name: path.stat().st_size for path in directory.iterdir()}
    assert set(on_disk) == {KIT_FILE, *record["files"]}
    assert sum(on_disk.values()) <= KIT_LIMIT_BYTES == 56 * 2**20
    assert json.loads((directory / KIT_FILE).read_text()) == record
    for name, entry in record["files"].items():
        assert entry == {"bytes": on_disk[name], "sha256": sha256_file(directory / name)}
    assert record["total_bytes"] == sum(entry["bytes"] for entry in record["files"].values())

    triton = record["triton"]
    assert (triton["version"], triton["source"]) == ("2.51.0", "nvidia-pytriton 0.7.0")
    assert triton["python_backend_stubs"] == ["3.11", "3.12"]
    # libxml2 -> libicuuc -> libicudata: big, but loaded at start.
    assert any(name.startswith("libicudata-") for name in triton["libraries"])
    assert [name.split("-")[0] for name in triton["dropped_libraries"]] == ["libpython3"]
    assert "libpython3.12.so.1.0" in triton["needs_from_the_machine"]

    packages = {package["name"]: package for package in record["packages"]}
    assert {name: package["version"] for name, package in packages.items()
            if name in ("numpy", "tritonclient", "python-rapidjson")} == {
        "numpy": "1.26.4", "tritonclient": "2.50.0", "python-rapidjson": "1.25"}
    assert packages["numpy"]["python"] == "3.12" and packages["tritonclient"]["python"] == "any"
    assert record["perf_analyzer"]["source"] == "tritonclient 2.50.0"
    assert {name: record["versions"][name] for name in ("triton", "nvidia-pytriton")} == {
        "triton": "2.51.0", "nvidia-pytriton": "0.7.0"}
    assert all(record["versions"][name] == package["version"]
               for name, package in packages.items())
    assert record["command"] == BUILT_BY and record["commit"] == commit()
    assert datetime.datetime.fromisoformat(record["built"]).tzinfo is not None


def test_unpacking_gives_the_server_perf_analyzer_and_the_kits_python(kit, unpacked):
    dest, env = unpacked
    assert env["OFA_TRITON_HOME"] == str(dest / "triton")
    assert env["PATH"].split(os.pathsep)[:2] == [str(dest / "python" / "bin"), str(dest / "bin")]
    for binary in ("triton/bin/tritonserver", "bin/perf_analyzer",
                   "triton/python_backend_stubs/3.11/triton_python_backend_stub"):
        assert os.access(dest / binary, os.X_OK), binary
    messages = []
    assert unpack_kit(kit[0], dest, messages.append) == env
    assert "already unpacked" in messages[0]


def test_the_kit_serves_and_measures_the_tiny_export(unpacked, exported_repositories,
                                                       goldens_by_name, golden_images, tmp_path):
    """`python3 -m benchmarks.device.kit smoke` as the GPU machine runs it, with one golden
    case: the kit's tritonserver answers like ModelScope, and its perf_analyzer measures."""
    dest, env = unpacked
    goldens = goldens_by_name["tiny"]
    case = next(case for case in goldens.cases if case["hypothesis"].strip())
    argv = ["python3", "-m", "benchmarks.device.kit", "smoke",
            "--repository", str(exported_repositories["tiny"]), "--workdir", str(tmp_path),
            "--image", str(golden_images[case["image"]]), "--hypothesis", case["hypothesis"]]
    if case["premise"]:
        argv += ["--premise", case["premise"]]
    result = subprocess.run(argv, cwd=ROOT, env=_with(env), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    smoke = json.loads(result.stdout)
    assert smoke["python"] == str(dest / "python" / "bin" / "python3")
    assert smoke["tritonserver"] == str(dest / "triton" / "bin" / "tritonserver")
    assert smoke["perf_analyzer"] == str(dest / "bin" / "perf_analyzer")
    assert smoke["numpy"] == "1.26.4"
    probabilities = smoke["prediction"]["probabilities"]
    for answer, expected in zip(goldens.answers, case["probabilities"]):
        assert abs(probabilities[ANSWER_TO_LABEL[answer]] - expected) <= PROBABILITY_TOLERANCE
    assert smoke["perf_analyzer_c1"]["throughput"] > 0


def test_a_damaged_archive_is_refused_by_name(kit, tmp_path):
    copy = tmp_path / "kit"
    shutil.copytree(kit[0], copy)
    damaged = copy / PERF_ANALYZER_ARCHIVE
    with open(damaged, "r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(KitError, match=f"{damaged}.*differs from {KIT_FILE}"):
        unpack_kit(copy, tmp_path / "dest", progress=lambda _: None)
    assert not (tmp_path / "dest" / "triton").exists()


# The GPU machine's situation: Python 3.12 in a virtual environment with numpy 2.5.2.
GPU_NUMPY = "numpy==2.5.2"

ECHO_CONFIG = """backend: "python"
max_batch_size: 0
input [ { name: "TEXT", data_type: TYPE_STRING, dims: [ 1 ] } ]
output [ { name: "ECHO", data_type: TYPE_STRING, dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""

# Answers each BYTES element prefixed with the numpy version the stub imported.
ECHO_MODEL = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            echo = np.array([np.__version__.encode() + b" " + value for value in text],
                            dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("ECHO", echo)]))
        return responses
"""

# Run by the kit's Python 3.12: the kit's tritonclient.http (gevent, geventhttpclient,
# rapidjson, numpy 1.26.4) against the kit's tritonserver.
ECHO_DRIVER = """
import json, sys
from pathlib import Path
import numpy as np
import tritonclient.http as httpclient
from ofa_triton.server import ServerOptions, TritonServer, find_triton

repository, log = Path(sys.argv[1]), Path(sys.argv[2])
with TritonServer(ServerOptions.loopback(repository), log_path=log) as server:
    server.wait_ready(120)
    text = httpclient.InferInput("TEXT", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"hello"], dtype=np.object_))
    echo = httpclient.InferenceServerClient(server.http_url).infer("echo", [text])
print(json.dumps({"tritonserver": str(find_triton().binary), "numpy": np.__version__,
                  "echo": [value.decode() for value in echo.as_numpy("ECHO")]}))
"""


def _python312() -> tuple[str, dict[str, str]] | None:
    """A Python 3.12 here, and the environment that runs it (a pyenv shim runs it only when
    asked for that version), or None."""
    env = _with({"PYENV_VERSION": "3.12"}, dropped=("PYTHONPATH",))
    found = shutil.which("python3.12")
    if found and subprocess.run([found, "-c", "import sys; assert sys.version_info[:2] == "
                                 "(3, 12)"], env=env, capture_output=True).returncode == 0:
        return found, env
    return None


def _exports(text: str) -> dict[str, str]:
    names_and_values = (shlex.split(line)[1].split("=", 1) for line in text.splitlines())
    return dict(names_and_values)


def test_on_python_312_with_numpy_2_the_stub_gets_the_kits_numpy(kit, tmp_path):
    found = _python312()
    if found is None:
        pytest.skip("no Python 3.12 here")
    python312, env = found
    environment = tmp_path / "gpu-like-python"
    subprocess.run([python312, "-m", "venv", str(environment)], env=env, check=True)
    machine_python = str(environment / "bin" / "python3")
    subprocess.run([machine_python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    GPU_NUMPY], env=env, check=True, timeout=600)

    unpack = subprocess.run([machine_python, "-m", "benchmarks.device.kit", "unpack", "--kit",
                             str(kit[0]), "--dest", str(tmp_path / "unpacked")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert unpack.returncode == 0, unpack.stderr
    assert "numpy 1.26.4: unpacked (ahead of this Python's 2.5.2)" in unpack.stderr
    kit_env = _with(_exports(unpack.stdout), dropped=("PYTHONPATH",))

    repository = tmp_path / "repository"
    (repository / "echo" / "1").mkdir(parents=True)
    (repository / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    (repository / "echo" / "1" / "model.py").write_text(ECHO_MODEL)
    served = subprocess.run(["python3", "-c", ECHO_DRIVER, str(repository),
                             str(tmp_path / "server.log")], cwd=ROOT, env=kit_env,
                            capture_output=True, text=True, timeout=300)
    log = (tmp_path / "server.log").read_text(errors="replace")[-4000:]
    assert served.returncode == 0, served.stderr[-3000:] + log
    result = json.loads(served.stdout)
    assert result["tritonserver"] == str(tmp_path / "unpacked" / "triton" / "bin" / "tritonserver")
    assert result["numpy"] == "1.26.4" and result["echo"] == ["1.26.4 hello"]
