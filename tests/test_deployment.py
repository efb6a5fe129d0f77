"""docker-compose.yml and its Dockerfile, checked without a Docker engine (none runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICE = COMPOSE["services"]["triton"]
DOCKERFILE = (ROOT / SERVICE["build"]["dockerfile"]).read_text()


def test_dockerfile_installs_the_python_models_dependencies_and_drops_root():
    requirements = (ROOT / "docker" / "requirements-triton.txt").read_text()
    for package in ("numpy==1.26.4", "tokenizers==0.23.3", "onnxruntime-gpu[cuda,cudnn]==",
                    "pillow=="):
        assert package in requirements
    assert "requirements-triton.txt" in DOCKERFILE and "--no-deps /opt/ofa-triton" in DOCKERFILE
    assert re.search(r"^USER triton-server$", DOCKERFILE, re.M)


def test_repository_is_mounted_read_only():
    mounts = [v for v in SERVICE["volumes"] if v.rsplit(":", 2)[1] == "/models"]
    assert len(mounts) == 1 and mounts[0].endswith(":ro")
    assert "--repository=/models" in SERVICE["command"]


def with_defaults(value: str) -> str:
    """Compose's ${NAME:-default} as it reads with NAME unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def size_in_bytes(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)\s*([kmg]?)b?", text.strip().lower()).groups()
    return float(number) * 1024 ** " kmg".index(unit or " ")


def test_healthcheck_user_and_ports():
    probe = with_defaults(" ".join(SERVICE["healthcheck"]["test"]))
    # The service's readiness (ofa_triton.service_health), not Triton's strict one: see
    # test_deploy and test_watchdog.
    assert probe.endswith("http://localhost:8003/ready")
    assert SERVICE["user"] == "triton-server"
    assert {"8000:8000", "8001:8001", "8002:8002", "8003:8003"} <= set(SERVICE["ports"])


def test_triton_service_has_resource_limits():
    resources = SERVICE["deploy"]["resources"]
    assert size_in_bytes(with_defaults(resources["limits"]["memory"])) >= 4 * 1024 ** 3
    assert size_in_bytes(with_defaults(SERVICE["shm_size"])) >= 256 * 1024 ** 2
    [gpus] = resources["reservations"]["devices"]
    assert gpus["driver"] == "nvidia" and "gpu" in gpus["capabilities"]
    assert "count" not in gpus and [with_defaults(d) for d in gpus["device_ids"]] == ["0"]
    assert "${" in gpus["device_ids"][0], "GPU selection comes from an environment variable"
    lines = (ROOT / "docker-compose.yml").read_text("utf-8").splitlines()
    for setting in ("memory:", "shm_size:", "device_ids:"):
        # A comment on how to size it sits right above each setting.
        [index] = [i for i, line in enumerate(lines) if line.strip().startswith(setting)][:1]
        assert lines[index - 1].strip().startswith("#"), setting
