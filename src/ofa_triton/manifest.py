"""Manifests: what each exported model version is made of, and the check that it still is.

``ofa-triton export`` writes ``manifest.json`` into every model's version directory: the
source checkpoint and its files' sha256, every artifact of that version directory and its
sha256, the export settings, the parity figures measured at export, package and Triton
versions, and the creation time. ``verify_repository`` (``ofa-triton verify``) and the Python
models at load time (``verify_version_directory``) compare the files with it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
# Written next to the artifacts by Python itself, not by the export.
IGNORED = ("__pycache__",)


class ManifestError(RuntimeError):
    """A version directory does not match its manifest; the message names the files."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _artifacts(version_dir: Path) -> list[Path]:
    return sorted(p for p in version_dir.rglob("*")
                  if p.is_file() and p.name != MANIFEST_FILE
                  and not any(part in IGNORED for part in p.relative_to(version_dir).parts))


def write_manifest(version_dir: Path, record: dict[str, Any]) -> Path:
    """Hash every file of ``version_dir`` and write the manifest (the export record plus the
    artifact list)."""
    artifacts = {str(p.relative_to(version_dir)): {"sha256": sha256_file(p),
                                                    "bytes": p.stat().st_size}
                 for p in _artifacts(version_dir)}
    path = version_dir / MANIFEST_FILE
    path.write_text(json.dumps({**record, "artifacts": artifacts}, indent=2) + "\n")
    return path


def read_manifest(version_dir: Path) -> dict[str, Any]:
    path = version_dir / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{version_dir} has no {MANIFEST_FILE}; re-export it")
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise ManifestError(f"{path} is not valid JSON: {error}") from error


def problems_in(version_dir: Path) -> list[str]:
    """Every difference between ``version_dir`` and its manifest, one line each."""
    try:
        manifest = read_manifest(version_dir)
    except ManifestError as error:
        return [str(error)]
    listed = manifest.get("artifacts", {})
    problems = []
    for name, expected in sorted(listed.items()):
        path = version_dir / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != expected["bytes"] or sha256_file(path) != expected["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest")
    for path in _artifacts(version_dir):
        if str(path.relative_to(version_dir)) not in listed:
            problems.append(f"{path}: not in the manifest")
    return problems


def verify_version_directory(version_dir: Path) -> None:
    """Raise ManifestError naming every file that does not match (used at model load)."""
    problems = problems_in(version_dir)
    if problems:
        raise ManifestError("refusing to load: " + "; ".join(problems))


def verify_repository(repository: Path) -> dict[str, list[str]]:
    """{"model/version": [problems]} for every version directory of every model."""
    results = {}
    for model_dir in sorted(p for p in repository.iterdir() if (p / "config.pbtxt").is_file()):
        versions = sorted((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()),
                          key=lambda p: int(p.name))
        if not versions:
            results[model_dir.name] = [f"{model_dir}: no version directory"]
        for version_dir in versions:
            results[f"{model_dir.name}/{version_dir.name}"] = problems_in(version_dir)
    return results
