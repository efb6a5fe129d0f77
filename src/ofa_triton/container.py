"""Checks of the container image's Python side that need no Docker engine.

The GPU deployment is ``docker/Dockerfile``: an NGC Triton base image, pip requirements files,
then this package. Nothing here can build it, so these checks read the Dockerfile and ask the
package index what pip inside the image would find:

- the base image's Python (``docker/base_images.json``, keyed by the FROM tag) satisfies the
  package's ``requires-python``;
- every pinned requirement the Dockerfile installs has a wheel for that Python, the image's
  glibc and x86-64, and the CUDA builds among them (onnxruntime-gpu, torch) were built for the
  image's CUDA major version;
- this package's own wheel installs for that Python (``pip install --dry-run`` with the image's
  interpreter and platform);
- the package's source needs no newer Python than the image's (``vermin``).

Wheels are matched from the index's file list (PEP 691) with ``packaging.tags``, the way pip's
finder matches them, instead of ``pip download``: the CUDA builds are 250 MB (onnxruntime-gpu)
to over 1 GB (torch with its libraries), too much to download at every test run. A CUDA
build's dependencies are read from the wheel's METADATA alone, with HTTP range requests.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

SOURCE_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = SOURCE_ROOT / "docker" / "Dockerfile"
BASE_IMAGES = SOURCE_ROOT / "docker" / "base_images.json"
INDEX_URL = os.environ.get("OFA_TRITON_INDEX_URL", "https://pypi.org/simple")
# Packages whose wheels are CUDA builds: their CUDA major must be the image's.
CUDA_BUILDS = ("onnxruntime-gpu", "torch")
# The code that runs inside the image: the package and the Triton models' adapters.
SOURCE_PATHS = (SOURCE_ROOT / "src" / "ofa_triton", SOURCE_ROOT / "model_repository")


class ImageCheckError(RuntimeError):
    """A check could not run (unknown base image, index unreachable); the message says why."""


@dataclasses.dataclass(frozen=True)
class BaseImage:
    tag: str
    python: str       # major.minor
    ubuntu: str
    glibc: str        # major.minor
    cuda: str         # major.minor

    @property
    def python_tuple(self) -> tuple[int, int]:
        major, minor = self.python.split(".")[:2]
        return int(major), int(minor)

    @property
    def platforms(self) -> list[str]:
        """The x86-64 Linux platform tags pip accepts on this image's glibc, best first."""
        major, minor = (int(part) for part in self.glibc.split("."))
        tags = [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 4, -1)]
        legacy = {17: "manylinux2014_x86_64", 12: "manylinux2010_x86_64", 5: "manylinux1_x86_64"}
        return tags + [name for m, name in legacy.items() if m <= minor]

    def supported_tags(self) -> set[Tag]:
        interpreter = f"cp{self.python_tuple[0]}{self.python_tuple[1]}"
        return set(cpython_tags(self.python_tuple, abis=[interpreter], platforms=self.platforms)) \
            | set(compatible_tags(self.python_tuple, interpreter, self.platforms))

    def marker_environment(self, extra: str = "") -> dict[str, str]:
        environment = default_environment()
        environment.update(python_version=self.python, python_full_version=f"{self.python}.0",
                           platform_system="Linux", sys_platform="linux", os_name="posix",
                           platform_machine="x86_64", implementation_name="cpython",
                           platform_python_implementation="CPython", extra=extra)
        return environment


@dataclasses.dataclass
class CheckResult:
    name: str
    problems: list[str]
    details: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# --- the Dockerfile ---------------------------------------------------------------------------

def dockerfile_base(dockerfile: Path = DOCKERFILE) -> str:
    for line in Path(dockerfile).read_text().splitlines():
        words = line.split()
        if words and words[0].upper() == "FROM":
            return words[1]
    raise ImageCheckError(f"{dockerfile} has no FROM line")


def read_base_image(tag: str, table: Path = BASE_IMAGES) -> BaseImage:
    rows = json.loads(Path(table).read_text())
    if tag not in rows:
        known = ", ".join(sorted(name for name in rows if not name.startswith("_")))
        raise ImageCheckError(
            f"the base image {tag} is not in {table} (known: {known}); add its row (Python, "
            "Ubuntu, glibc and CUDA versions, from NVIDIA's Triton release notes) before "
            "building on it")
    row = rows[tag]
    return BaseImage(tag, row["python"], row["ubuntu"], row["glibc"], row["cuda"])


def _logical_lines(text: str) -> list[str]:
    return text.replace("\\\n", " ").splitlines()


def dockerfile_requirement_files(dockerfile: Path = DOCKERFILE) -> list[Path]:
    """The requirements files that ``pip install -r`` reads in the image, as paths in the
    source tree (mapped back through the Dockerfile's COPY lines)."""
    dockerfile = Path(dockerfile)
    copies: dict[str, str] = {}
    files = []
    for line in _logical_lines(dockerfile.read_text()):
        words = line.split()
        if not words:
            continue
        if words[0].upper() == "COPY" and len(words) == 3:
            copies[words[2]] = words[1]
        if words[0].upper() == "RUN" and "pip" in words:
            for index, word in enumerate(words[:-1]):
                if word in ("-r", "--requirement"):
                    image_path = words[index + 1]
                    if image_path not in copies:
                        raise ImageCheckError(f"{dockerfile}: {image_path} is installed but "
                                              "not copied into the image by a COPY line")
                    files.append(SOURCE_ROOT / copies[image_path])
    return files


def read_requirements(path: Path) -> list[Requirement]:
    requirements = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirements.append(Requirement(line))
    return requirements


def pinned_version(requirement: Requirement) -> str:
    pins = [spec.version for spec in requirement.specifier if spec.operator == "=="]
    if len(pins) != 1:
        raise ImageCheckError(f"{requirement}: pin one exact version (==) in the image's "
                              "requirements, so that the image is what the tests checked")
    return pins[0]


def requires_python(pyproject: Path = SOURCE_ROOT / "pyproject.toml") -> str:
    return tomllib.loads(Path(pyproject).read_text())["project"]["requires-python"]


# --- the checks -------------------------------------------------------------------------------

def python_problems(image: BaseImage, requires: str) -> list[str]:
    if SpecifierSet(requires).contains(image.python):
        return []
    return [f"{image.tag} runs Python {image.python}, but this package says requires-python "
            f"= '{requires}' (pyproject.toml), so pip refuses to install it there. Change the "
            f"Dockerfile's FROM line to a base image whose Python is in that range ("
            f"{BASE_IMAGES.name} lists them: 24.12 and later have Python 3.12), or widen "
            "requires-python only after the code and every pinned dependency support "
            f"Python {image.python}"]


def _index_files(name: str) -> list[dict]:
    url = f"{INDEX_URL.rstrip('/')}/{canonicalize_name(name)}/"
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)["files"]
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return []
        raise ImageCheckError(f"the package index answered {error.code} for {url}") from None
    except OSError as error:
        raise ImageCheckError(f"cannot reach the package index at {url} ({error}); check the "
                              "network, set OFA_TRITON_INDEX_URL to a mirror, or skip the "
                              "index checks with --offline") from None


def find_wheel(requirement: Requirement, image: BaseImage) -> dict | None:
    """The file record of the wheel pip would install in the image, or None."""
    version = Version(pinned_version(requirement))
    supported = image.supported_tags()
    for record in _index_files(requirement.name):
        filename = record["filename"]
        if not filename.endswith(".whl") or record.get("yanked"):
            continue
        _, file_version, _, tags = parse_wheel_filename(filename)
        if file_version != version or not tags & supported:
            continue
        needed = record.get("requires-python")
        if needed and not SpecifierSet(needed).contains(image.python):
            continue
        return record
    return None


class _HttpRange(io.RawIOBase):
    """A remote file read with HTTP range requests: zipfile reads a wheel's METADATA through
    it without downloading the wheel."""

    def __init__(self, url: str):
        self.url = url
        head = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(head, timeout=120) as response:
            self.size = int(response.headers["Content-Length"])
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self.position, self.size)[whence]
        self.position = base + offset
        return self.position

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.size - self.position)
        if count <= 0:
            return 0
        request = urllib.request.Request(
            self.url, headers={"Range": f"bytes={self.position}-{self.position + count - 1}"})
        with urllib.request.urlopen(request, timeout=120) as response:
            data = response.read()
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)


def wheel_requires_dist(record: dict) -> list[Requirement]:
    try:
        remote = zipfile.ZipFile(io.BufferedReader(_HttpRange(record["url"]), 1 << 16))
        metadata_name = next(name for name in remote.namelist()
                             if name.endswith(".dist-info/METADATA"))
        metadata = remote.read(metadata_name).decode("utf-8")
    except OSError as error:
        raise ImageCheckError(f"cannot read the METADATA of {record['filename']} ({error})") from None
    return [Requirement(line.split(":", 1)[1].strip()) for line in metadata.splitlines()
            if line.startswith("Requires-Dist:")]


_CUDA_SUFFIX = re.compile(r"-cu(\d+)$")
# Packages whose version is the CUDA version itself (others, like cufft 12 for CUDA 13, differ).
_CUDA_VERSIONED = ("nvidia-cuda-runtime", "nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime-cu13",
                   "cuda-toolkit")


def cuda_majors(requirement: Requirement, requires_dist: list[Requirement],
                image: BaseImage) -> set[int]:
    """The CUDA major versions that the wheel's dependencies (with the extras the Dockerfile
    asks for) are built for."""
    majors = set()
    for dependency in requires_dist:
        if dependency.marker is not None and not any(
                dependency.marker.evaluate(image.marker_environment(extra))
                for extra in ({""} | set(requirement.extras))):
            continue
        name = canonicalize_name(dependency.name)
        suffix = _CUDA_SUFFIX.search(name)
        if suffix:
            majors.add(int(suffix.group(1)))
        elif name in _CUDA_VERSIONED:
            majors |= {Version(spec.version).major for spec in dependency.specifier}
    return majors


def requirement_problems(requirement: Requirement, image: BaseImage) -> tuple[list[str], str]:
    """Problems of one pinned requirement in the image, and a line saying what was found."""
    record = find_wheel(requirement, image)
    if record is None:
        return [f"{requirement}: no wheel for Python {image.python} on manylinux x86-64 "
                f"(glibc {image.glibc}) in {INDEX_URL}; pip in {image.tag} would build it "
                "from source or fail. Pin a version that ships such a wheel"], ""
    found = f"{requirement} -> {record['filename']}"
    if canonicalize_name(requirement.name) not in CUDA_BUILDS:
        return [], found
    majors = cuda_majors(requirement, wheel_requires_dist(record), image)
    image_major = int(image.cuda.split(".")[0])
    if majors != {image_major}:
        built_for = ", ".join(f"CUDA {m}" for m in sorted(majors)) or "no CUDA library"
        return [f"{requirement} is built for {built_for}, but {image.tag} has CUDA "
                f"{image.cuda}: pin a build for CUDA {image_major}, or choose a base image "
                "with the CUDA version this build needs"], found
    return [], f"{found} (CUDA {image_major})"


def package_wheel_problems(image: BaseImage) -> list[str]:
    """Build this package's wheel and ask pip whether it installs with the image's Python and
    platform (what ``pip install /opt/ofa-triton`` in the Dockerfile does)."""
    with tempfile.TemporaryDirectory(prefix="ofa-image-check-") as scratch:
        # Built from the files the Dockerfile copies, in a scratch copy (the build writes
        # build/ and *.egg-info beside its sources).
        source = Path(scratch) / "source"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(SOURCE_ROOT / name, source / name)
        shutil.copytree(SOURCE_ROOT / "src", source / "src",
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
             scratch, str(source)], capture_output=True, text=True)
        if built.returncode:
            return [f"building this package's wheel failed: {built.stderr.strip()[-2000:]}"]
        (wheel,) = Path(scratch).glob("*.whl")
        dry_run = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps",
             "--ignore-installed", "--only-binary=:all:", "--implementation", "cp",
             "--python-version", image.python, "--platform", image.platforms[0],
             "--target", str(Path(scratch) / "target"), str(wheel)],
            capture_output=True, text=True)
        if dry_run.returncode:
            said = dry_run.stderr.strip().splitlines()
            return [f"pip would not install this package's wheel on Python {image.python}: "
                    f"{said[-1] if said else 'exit ' + str(dry_run.returncode)}"]
    return []


def source_problems(image: BaseImage, paths: tuple[Path, ...] = SOURCE_PATHS) -> list[str]:
    """Language features and standard-library names newer than the image's Python, found by
    vermin in the package and the Triton models."""
    vermin = shutil.which("vermin", path=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if vermin is None:
        return ["vermin is not installed (pip install -e '.[test]' brings it)"]
    result = subprocess.run(
        [vermin, "--no-tips", "--violations", "--no-parse-comments",
         f"--target={image.python}-", *map(str, paths)], capture_output=True, text=True)
    if result.returncode:
        findings = [line.strip() for line in result.stdout.splitlines()
                    if " requires " in line or line.startswith("!")]
        return [f"the source needs a Python newer than the image's {image.python} (vermin): "
                + "; ".join(findings[:20] or result.stdout.splitlines()[-3:])]
    return []


# --- what the image's entrypoint imports -------------------------------------------------------

# The image runs ``ofa-triton serve`` (the CLI, then the server, watchdog and health endpoint).
SERVE_MODULES = ("ofa_triton.cli", "ofa_triton.foreground")
# The image installs the GPU build; this environment has the CPU one, with the same
# dependencies.
_LOCAL_BUILD = {"onnxruntime-gpu": "onnxruntime"}


def _imported_top_level(modules: tuple[str, ...]) -> set[str]:
    """The top-level modules that this package's own code imports (import statements run in
    ``ofa_triton`` modules) when a fresh interpreter imports ``modules``. What those
    libraries import in turn is their business (torch tries optional ones, for instance)."""
    script = ("import builtins, importlib, json, sys\n"
              "direct, original = set(), builtins.__import__\n"
              "def record(name, globals=None, locals=None, fromlist=(), level=0):\n"
              "    if level == 0 and str((globals or {}).get('__name__', '')).startswith("
              "'ofa_triton'):\n"
              "        direct.add(name.split('.')[0])\n"
              "    return original(name, globals, locals, fromlist, level)\n"
              "builtins.__import__ = record\n"
              "for name in json.loads(sys.argv[1]): importlib.import_module(name)\n"
              "print(json.dumps(sorted(direct)))")
    result = subprocess.run([sys.executable, "-c", script, json.dumps(modules)],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise ImageCheckError(f"importing {', '.join(modules)} failed here: "
                              f"{result.stderr.strip()[-1000:]}")
    return set(json.loads(result.stdout))


def _installed_closure(names: list[str]) -> set[str]:
    """The distributions ``names`` need, as installed here (their dependencies, recursively;
    extras and markers that do not apply left out)."""
    from importlib import metadata

    environment = default_environment()
    seen: set[str] = set()
    todo = [canonicalize_name(_LOCAL_BUILD.get(name, name)) for name in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate({**environment,
                                                                       "extra": ""}):
                continue
            todo.append(canonicalize_name(requirement.name))
    return seen


def serve_import_problems(dockerfile: Path = DOCKERFILE,
                          modules: tuple[str, ...] = SERVE_MODULES) -> list[str]:
    """Third-party modules that the image's ``ofa-triton serve`` imports but that its
    requirements files (with their dependencies) do not install: the package goes in with
    ``--no-deps``, so such an import would fail only where the image runs."""
    from importlib import metadata

    installed = _installed_closure([requirement.name
                                    for path in dockerfile_requirement_files(dockerfile)
                                    for requirement in read_requirements(path)])
    providers = metadata.packages_distributions()
    problems = []
    for module in sorted(_imported_top_level(modules) - set(sys.stdlib_module_names)):
        if module.startswith("_") or module == "ofa_triton":
            continue
        distributions = {canonicalize_name(name) for name in providers.get(module, [])}
        if not distributions & installed:
            where = ", ".join(sorted(distributions)) or "no distribution"
            problems.append(f"ofa-triton serve imports {module} ({where}), which the image "
                            "does not install: add it to docker/requirements-triton.txt "
                            "(pinned), or import it lazily where only export needs it")
    return problems


def check_image(dockerfile: Path = DOCKERFILE, *, table: Path = BASE_IMAGES,
                pyproject: Path = SOURCE_ROOT / "pyproject.toml",
                offline: bool = False) -> list[CheckResult]:
    """Every check, in order; ``offline`` skips those that need the package index."""
    image = read_base_image(dockerfile_base(dockerfile), table)
    results = [CheckResult("base image Python", python_problems(image, requires_python(pyproject)),
                           [f"{image.tag}: Python {image.python}, Ubuntu {image.ubuntu}, "
                            f"glibc {image.glibc}, CUDA {image.cuda}"]),
               CheckResult("source needs no newer Python", source_problems(image)),
               CheckResult("serve command's imports are installed",
                           serve_import_problems(dockerfile))]
    if offline:
        return results
    requirements = CheckResult("image requirements have wheels", [])
    for path in dockerfile_requirement_files(dockerfile):
        for requirement in read_requirements(path):
            problems, found = requirement_problems(requirement, image)
            requirements.problems += problems
            if found:
                requirements.details.append(found)
    results.append(requirements)
    results.append(CheckResult("package wheel installs", package_wheel_problems(image)))
    return results
