"""Shared fixtures: generated checkpoints and their exports, made once per test session."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ofa_triton.tiny_checkpoint import generate_tiny_checkpoint
from tests.golden.cases import CHECKPOINTS, write_images

GOLDEN_DIR = Path(__file__).parent / "golden"


class Goldens:
    """ModelScope's outputs for one generated checkpoint (see tests/golden/make_goldens.py)."""

    def __init__(self, name: str):
        self.name = name
        data = json.loads((GOLDEN_DIR / f"{name}_visual_entailment.json").read_text("utf-8"))
        self.generator = data["generator"]
        self.arguments = data["generator_arguments"]
        self.answers = data["answers"]
        self.cases = data["cases"]
        self.reference_versions = data["reference_versions"]
        self.pixels = dict(np.load(GOLDEN_DIR / f"{name}_pixels.npz"))


@pytest.fixture(scope="session", params=sorted(CHECKPOINTS))
def golden_name(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def goldens_by_name() -> dict[str, Goldens]:
    return {name: Goldens(name) for name in CHECKPOINTS}


@pytest.fixture(scope="session")
def checkpoint_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: generate_tiny_checkpoint(root / name, **kwargs)
            for name, kwargs in CHECKPOINTS.items()}


@pytest.fixture(scope="session")
def tiny_checkpoint(checkpoint_dirs) -> Path:
    return checkpoint_dirs["tiny"]


@pytest.fixture(scope="session")
def golden_images(tmp_path_factory) -> dict[str, Path]:
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def entailment_fields(golden_images) -> dict:
    """One valid visual-entailment request (the fault and watchdog tests' load)."""
    return {"image": golden_images["photo_640x480.jpg"].read_bytes(),
            "hypothesis": "two people walk down a street"}


@pytest.fixture(scope="session")
def exported_repositories(tmp_path_factory, checkpoint_dirs) -> dict[str, Path]:
    """Each generated checkpoint exported (fp32, CPU) into its own model repository."""
    from ofa_triton.export import export_repository

    root = tmp_path_factory.mktemp("repositories")
    repositories = {}
    for name, checkpoint in checkpoint_dirs.items():
        export_repository(checkpoint, root / name, progress=lambda _: None)
        repositories[name] = root / name
    return repositories


# The device kit, built once per session (it downloads about 35 MB of wheels): for
# test_device_kit.py and the smoke run of the GPU benchmark (test_device_run.py).
DEVICE_KIT_BUILT_BY = "tests (conftest.py)"


@pytest.fixture(scope="session")
def built_device_kit(tmp_path_factory) -> tuple[Path, dict]:
    from benchmarks.device.kit import build_kit

    output = tmp_path_factory.mktemp("device-kit") / "kit"
    return output, build_kit(output, progress=lambda _: None, command=DEVICE_KIT_BUILT_BY)


@pytest.fixture(scope="session")
def device_kit(built_device_kit) -> Path:
    return built_device_kit[0]


def start_triton(repository: Path, log_dir: Path, **settings):
    """A real tritonserver (the nvidia-pytriton wheel's) on free loopback ports; ``settings``
    are other ServerOptions (model_control, admin_key, extra_args)."""
    from ofa_triton.server import ServerOptions, TritonServer

    return TritonServer(ServerOptions.loopback(repository, **settings),
                        log_path=log_dir / "server.log")


@pytest.fixture(scope="session")
def triton_server(exported_repositories, tmp_path_factory):
    """The tiny export, served for the whole session."""
    with start_triton(exported_repositories["tiny"], tmp_path_factory.mktemp("triton")) as server:
        server.wait_ready()
        yield server


PROBABILITY_TOLERANCE = 1e-4   # served answers against ModelScope's (fp32 graph, any batch)


def assert_answers_match_goldens(client, goldens: Goldens, golden_images: dict[str, Path],
                                 concurrency: int = 8,
                                 tolerance: float = PROBABILITY_TOLERANCE) -> None:
    """Every golden case through ``client`` (a VisualEntailmentClient): probabilities within
    ``tolerance`` of ModelScope's, and its label wherever ModelScope's two best answers are
    more than twice that apart (closer ones may swap within the tolerance; at the fp32
    default no case is that close). ModelScope answers a blank hypothesis; the service
    refuses it with INVALID_ARG, which is checked instead."""
    from ofa_triton.client import PredictionError
    from ofa_triton.tasks.visual_entailment.labels import ANSWER_TO_LABEL

    requests = [{"image": golden_images[c["image"]].read_bytes(), "hypothesis": c["hypothesis"],
                 "premise": c["premise"]} for c in goldens.cases]
    results = client.predict_many(requests, concurrency=concurrency, return_exceptions=True)
    for case, result in zip(goldens.cases, results):
        if not case["hypothesis"].strip():
            assert isinstance(result, PredictionError), (case["name"], result)
            assert result.status in ("400", "StatusCode.INVALID_ARGUMENT")
            assert "'hypothesis' is empty" in str(result)
            continue
        assert not isinstance(result, Exception), (case["name"], result)
        best, second = sorted(case["probabilities"])[:-3:-1]
        if best - second > 2 * tolerance:
            assert result.label == ANSWER_TO_LABEL[case["answer"]], case["name"]
        for answer, expected in zip(goldens.answers, case["probabilities"]):
            got = result.probabilities[ANSWER_TO_LABEL[answer]]
            assert abs(got - expected) <= tolerance, case["name"]
        assert abs(result.confidence - case["score"]) <= tolerance, case["name"]
