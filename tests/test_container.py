"""The GPU image's Python side, checked without a Docker engine (ofa_triton.container).

The checks that ask the package index (wheels, CUDA builds, the package's own wheel) need the
network that installs this project's dependencies; they fail, not skip, when it is missing.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.version import Version

from ofa_triton import container
from ofa_triton.server import ServerOptions, TritonInstall, policy_flags, server_command
from ofa_triton.service_health import HEALTH_PORT

ROOT = Path(__file__).resolve().parents[1]
IMAGE = container.read_base_image(container.dockerfile_base())
# The packages whose version changes answers: Pillow resizes, tokenizers splits the text, and
# numpy<2 keeps the Python backend stub alive. The image must run the versions the golden
# tests (test_fidelity.py) run with.
ANSWER_DECIDING = ("pillow", "tokenizers", "numpy")


def dockerfile_from(tmp_path: Path, tag: str) -> Path:
    """docker/Dockerfile with another FROM line."""
    text = container.DOCKERFILE.read_text().replace(IMAGE.tag, tag)
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    return path


def results_by_name(results):
    return {result.name: result for result in results}


def test_base_image_python_satisfies_requires_python():
    assert container.python_problems(IMAGE, container.requires_python()) == []
    assert IMAGE.python == "3.12" and IMAGE.cuda.startswith("13.")


def test_wrong_pairing_fails_and_says_what_to_change(tmp_path):
    """The 24.10 image (Python 3.10) with today's requires-python: every check that can see
    it fails, each with what to do."""
    results = results_by_name(container.check_image(dockerfile_from(
        tmp_path, "nvcr.io/nvidia/tritonserver:24.10-py3")))
    [python] = results["base image Python"].problems
    assert "runs Python 3.10" in python and "Change the Dockerfile's FROM line" in python
    [source] = results["source needs no newer Python"].problems
    assert "newer than the image's 3.10" in source and "tomllib" in source
    wheels = results["image requirements have wheels"].problems
    assert any(p.startswith("pillow==13.0.0: no wheel for Python 3.10") and "Pin a version" in p
               for p in wheels), wheels
    [package] = results["package wheel installs"].problems
    assert "requires a different Python" in package


def test_unknown_base_image_is_refused_with_advice(tmp_path):
    with pytest.raises(container.ImageCheckError, match="add its row"):
        container.check_image(dockerfile_from(tmp_path, "nvcr.io/nvidia/tritonserver:99.01-py3"),
                              offline=True)


def test_every_check_passes_for_the_dockerfile():
    results = container.check_image()
    assert [r.name for r in results] == ["base image Python", "source needs no newer Python",
                                         "serve command's imports are installed",
                                         "image requirements have wheels",
                                         "package wheel installs"]
    assert all(r.ok for r in results), [r.problems for r in results]
    found = results_by_name(results)["image requirements have wheels"].details
    assert any("onnxruntime_gpu-1.31.1-cp312" in line and "(CUDA 13)" in line for line in found)
    assert any("torch-2.13.0-cp312" in line and "(CUDA 13)" in line for line in found)


def test_a_cuda_build_for_another_cuda_is_named(tmp_path):
    """24.12 has Python 3.12 but CUDA 12.6: the CUDA 13 onnxruntime-gpu is refused."""
    results = results_by_name(container.check_image(dockerfile_from(
        tmp_path, "nvcr.io/nvidia/tritonserver:24.12-py3")))
    assert results["base image Python"].ok
    problems = results["image requirements have wheels"].problems
    assert [p.split("]")[0].split("==")[0] for p in problems] == ["onnxruntime-gpu[cuda,cudnn",
                                                                   "torch"], problems
    assert all("built for CUDA 13" in p and "has CUDA 12.6" in p for p in problems)


def test_vermin_finds_code_newer_than_the_image(tmp_path):
    newer = tmp_path / "uses_3_11.py"
    newer.write_text("import tomllib\n")
    [problem] = container.source_problems(container.read_base_image(
        "nvcr.io/nvidia/tritonserver:24.10-py3"), (newer,))
    assert "tomllib" in problem
    assert container.source_problems(IMAGE, (newer,)) == []


def test_image_requirements_are_pinned_to_the_versions_the_goldens_pass_with():
    """The image must reproduce the goldens: its answer-deciding packages are the versions
    installed here, where test_fidelity.py compares with ModelScope (Pillow 12.1 moved pixels
    by up to 0.19 against a 1e-6 tolerance)."""
    pinned = {}
    for path in container.dockerfile_requirement_files():
        for requirement in container.read_requirements(path):
            pinned[requirement.name.lower()] = container.pinned_version(requirement)
    for name in ANSWER_DECIDING + ("torch",):   # torch: the PyTorch runtime's answers
        assert pinned[name] == Version(metadata.version(name)).public, name


def test_requirements_without_an_exact_pin_are_refused(tmp_path):
    loose = tmp_path / "requirements.txt"
    loose.write_text("pillow>=12\n")
    [requirement] = container.read_requirements(loose)
    with pytest.raises(container.ImageCheckError, match="pin one exact version"):
        container.pinned_version(requirement)


def dockerfile_instruction(name: str) -> list[str]:
    line = next(line for line in container.DOCKERFILE.read_text().splitlines()
                if line.startswith(f"{name} "))
    return yaml.safe_load(line.removeprefix(f"{name} "))


def serve_arguments(arguments: list[str]):
    from ofa_triton.cli import build_parser

    return build_parser().parse_args(["serve", *arguments])


def test_the_image_and_compose_run_ofa_triton_serve_with_its_watchdog_and_health_port():
    """The container runs `ofa-triton serve` (so the watchdog and /ready exist there), with
    arguments the CLI accepts; the flags tritonserver gets are policy_flags', one source."""
    assert dockerfile_instruction("ENTRYPOINT") == ["ofa-triton", "serve"]
    image = serve_arguments(dockerfile_instruction("CMD"))
    assert (image.repository, image.model_control, image.host, image.health_port,
            image.no_watchdog) == (Path("/models"), "none", "0.0.0.0", HEALTH_PORT, False)

    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["triton"]
    assert "entrypoint" not in service
    compose = serve_arguments(service["command"])
    assert (compose.repository, compose.model_control, compose.admin_key_env,
            compose.health_port, compose.no_watchdog) == (
        Path("/models"), "explicit", "OFA_TRITON_ADMIN_KEY", HEALTH_PORT, False)
    assert service["environment"]["OFA_TRITON_ADMIN_KEY"].startswith(
        "${OFA_TRITON_ADMIN_KEY:?")                      # compose refuses to start without
    assert service["init"] is True                      # exited stubs are reaped
    assert f"{HEALTH_PORT}:{HEALTH_PORT}" in service["ports"]
    assert service["healthcheck"]["test"] == ["CMD", "curl", "-fsS",
                                              f"http://localhost:{HEALTH_PORT}/ready"]

    # The image's tritonserver is on PATH: its argv carries the policy flags, and its
    # environment is left as the image set it (no library directory put first).
    installed = TritonInstall(Path("/opt/tritonserver/bin/tritonserver"), None, None, None)
    options = ServerOptions(Path("/models"), model_control="explicit", admin_key="k")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LD_LIBRARY_PATH", "/usr/local/cuda/compat/lib:/opt/tritonserver/lib")
        argv, env = server_command(options, Path("/nonexistent"), installed)
    assert argv[0] == "/opt/tritonserver/bin/tritonserver"
    assert argv[-len(policy_flags("explicit", "k")):] == policy_flags("explicit", "k")
    assert not any(arg.startswith("--backend-directory") for arg in argv)
    assert env["LD_LIBRARY_PATH"] == "/usr/local/cuda/compat/lib:/opt/tritonserver/lib"


def test_the_serve_commands_imports_are_what_the_image_installs(tmp_path):
    """The package goes into the image with --no-deps: every third-party module that
    `ofa-triton serve` imports must come from the image's requirements (or their
    dependencies: `packaging`, which the CLI imports, comes with tokenizers' huggingface-hub
    and with onnxruntime). A requirements file without Pillow is caught."""
    assert container.serve_import_problems() == []
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("".join(
        line + "\n" for line in (ROOT / "docker" / "requirements-triton.txt").read_text()
        .splitlines() if not line.startswith("pillow")))
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f"FROM {IMAGE.tag}\nCOPY {requirements} /opt/requirements.txt\n"
                          "RUN python3 -m pip install -r /opt/requirements.txt\n")
    [problem] = container.serve_import_problems(dockerfile)
    assert problem.startswith("ofa-triton serve imports PIL (pillow), which the image "
                              "does not install: add it to docker/requirements-triton.txt")


def test_the_images_import_check_names_modules_that_exist():
    """The Dockerfile's build ends by importing what the Python models import; a module that
    moved would fail the build only where Docker runs."""
    import importlib
    import re

    [line] = re.findall(r'python3 -c "import ([^"]+)"', container.DOCKERFILE.read_text())
    for module in line.split(","):
        importlib.import_module(module.strip())


def test_serve_starts_without_torch_and_export_errors_are_still_one_line():
    """`ofa-triton serve` (the image's entrypoint) imports no torch or onnx: those load with
    the commands that export. An export's validation error still ends as one line, exit 2."""
    import subprocess
    import sys

    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, ofa_triton.cli, ofa_triton.foreground; "
         "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))"],
        capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    assert loaded == "[]"

    from ofa_triton import cli
    from ofa_triton.onnx_export import ExportValidationError

    assert ExportValidationError in cli._user_errors()
    assert ExportValidationError not in cli.USER_ERRORS
