"""Manifests: what each exported model version is made of, and the check that it still is.

``ofa-triton export`` writes ``manifest.json`` into every model's version directory: the
source checkpoint and its files' sha256, every artifact of that version directory and its
sha256, the export settings, the parity figures measured at export, package and Triton
versions, and the creation time. ``verify_repository`` (``ofa-triton verify``) and the Python
models at load time (``verify_version_directory``) compare the files with it.

The answers also depend on code outside the version directory: this package, Pillow (image
decoding and resizing) and tokenizers (BPE) in the server's environment. At load,
``verify_version_directory`` compares their versions with the ones recorded at export and
refuses a version whose answers they would change (another major.minor release of one of
them); any other difference (a patch release, numpy, the runtimes) is returned as a warning
for the model's log. ``OFA_TRITON_ALLOW_VERSION_MISMATCH=1`` in the server's environment turns
the refusal into a warning, for an operator who has checked the answers under the new versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__

MANIFEST_FILE = "manifest.json"
# Written next to the artifacts by Python itself, not by the export.
IGNORED = ("__pycache__",)

# The Triton release the tests serve with (nvidia-pytriton 0.7.0 ships it). The GPU image's
# base (docker/Dockerfile) is a newer release: README, "The GPU container".
TRITON_VERSION = "2.51.0"
RECORDED_PACKAGES = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "safetensors",
                     "tokenizers", "numpy", "pillow")
# Packages whose release changes the answers, and what they compute: a version exported under
# another major.minor of one of them is refused at load. Pillow 12.1 and 13.0 resize the same
# image to pixels up to 0.19 apart (the goldens allow 1e-6).
ANSWER_CHANGING = {"ofa-triton": "the pre- and postprocessing",
                   "pillow": "image decoding and resizing",
                   "tokenizers": "the BPE tokens"}
ALLOW_MISMATCH_ENV = "OFA_TRITON_ALLOW_VERSION_MISMATCH"


class ManifestError(RuntimeError):
    """A version directory does not match its manifest; the message names the files."""


def package_versions() -> dict[str, str]:
    """The versions of what computes the answers, in this environment (recorded at export,
    compared at load)."""
    versions = {"ofa-triton": __version__, "python": platform.python_version(),
                "triton": TRITON_VERSION}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _release(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def version_differences(recorded: Mapping[str, str],
                        running: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(refusals, warnings): each package whose version differs between the export's record
    and this environment, one line each. The server's Triton release is not visible from a
    model, so "triton" is not compared."""
    refusals, warnings = [], []
    for name, exported in sorted(recorded.items()):
        now = running.get(name)
        if name == "triton" or now is None or now == exported:
            continue
        line = f"{name} {now} here, {exported} at export"
        if name in ANSWER_CHANGING and _release(now) != _release(exported):
            refusals.append(f"{line}: {ANSWER_CHANGING[name]} may differ")
        else:
            warnings.append(line)
    return refusals, warnings


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


def verify_version_directory(version_dir: Path,
                             running: Mapping[str, str] | None = None) -> list[str]:
    """At model load: raise ManifestError naming every file that does not match, or every
    package release (``running``, default this environment's) that would change the answers;
    returns the other version differences, one warning line each, for the model's log."""
    problems = problems_in(version_dir)
    if problems:
        raise ManifestError("refusing to load: " + "; ".join(problems))
    recorded = read_manifest(version_dir).get("versions", {})
    refusals, warnings = version_differences(recorded, running or package_versions())
    if refusals and os.environ.get(ALLOW_MISMATCH_ENV) == "1":
        warnings = [f"{line} (allowed by {ALLOW_MISMATCH_ENV}=1)" for line in refusals] + warnings
    elif refusals:
        raise ManifestError(
            f"refusing to load {version_dir}: it was exported under other versions of what "
            f"computes its answers: {'; '.join(refusals)}. Serve it with the versions it was "
            f"exported with, or export it again here; or, once you have checked its answers "
            f"here, set {ALLOW_MISMATCH_ENV}=1 in the server's environment")
    return [f"{version_dir}: {line}" for line in warnings]


def checked_version_directory(args: Mapping[str, str], warn) -> Path:
    """A Python model's ``initialize(args)``: its version directory, checked against the
    manifest and the environment (``verify_version_directory``); each warning goes to
    ``warn`` (the model's logger)."""
    version_dir = Path(args["model_repository"]) / args["model_version"]
    for line in verify_version_directory(version_dir):
        warn(f"{args['model_name']}: {line}")
    return version_dir


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
