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
from ofa_triton.server import policy_flags

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


def test_compose_and_image_start_the_server_with_the_flags_serve_uses():
    """One source for the server's flags: ofa_triton.server.policy_flags."""
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["triton"]
    key = "${OFA_TRITON_ADMIN_KEY:?set OFA_TRITON_ADMIN_KEY (environment or .env)}"
    assert service["command"] == ["--model-repository=/models",
                                  *policy_flags("explicit", admin_key=key)]
    cmd_line = next(line for line in container.DOCKERFILE.read_text().splitlines()
                    if line.startswith("CMD "))
    assert yaml.safe_load(cmd_line.removeprefix("CMD ")) == ["--model-repository=/models",
                                                            *policy_flags("none")]


def test_the_images_import_check_names_modules_that_exist():
    """The Dockerfile's build ends by importing what the Python models import; a module that
    moved would fail the build only where Docker runs."""
    import importlib
    import re

    [line] = re.findall(r'python3 -c "import ([^"]+)"', container.DOCKERFILE.read_text())
    for module in line.split(","):
        importlib.import_module(module.strip())
