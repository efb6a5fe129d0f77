"""The device kit: what a bare GPU machine lacks to serve this project on a real tritonserver
and measure it with perf_analyzer, small enough to travel there with the repository.

The GPU machine has Python 3.12 with torch, grpcio, protobuf, aiohttp and numpy 2, but no
package registry and no network. ``make device-kit`` writes ``.device-kit/`` (at most
56 MiB):

- ``tritonserver.tar.xz``: Triton 2.51.0 from the nvidia-pytriton 0.7.0 wheel, laid out as
  ``$OFA_TRITON_HOME`` wants it (``ofa_triton.server``): ``bin/tritonserver``,
  ``backends/python/``, the backend stubs for Python 3.11 (CI) and 3.12 (the GPU machine),
  and in ``lib/`` the wheel's vendored libraries that these binaries load (found with ``ldd``;
  the others are left out, and KIT.json says why);
- ``perf_analyzer.tar.xz``: perf_analyzer from the tritonclient 2.50.0 wheel;
- ``python-packages.tar.xz``: the contents of the wheels the machine lacks (numpy 1.26.4,
  because the Python-backend stub of Triton 2.51 crashes on BYTES inputs with numpy 2;
  tritonclient and python-rapidjson; gevent and geventhttpclient for tritonclient.http),
  without their tests and type stubs;
- ``KIT.json``: versions, each file's size and sha256, the command and commit that built it.

On the machine, from the repository root, with its python3 (the one with torch)::

    eval "$(python3 -m benchmarks.device.kit unpack)"

checks every archive against KIT.json, unpacks the kit into ``work/device-kit/`` and prints
the variables to export: ``OFA_TRITON_HOME`` (the kit's tritonserver) and ``PATH``, which
then starts with the kit's Python (a virtual environment of that python3 with the packages it
lacks in front of its own, numpy 1.26.4 among them) and perf_analyzer. Commands run after it
as ``python3 ...`` serve and measure with the kit, the server's Python-backend stubs included
(see make_kit_python for why PATH, not PYTHONPATH).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import io
import json
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
try:
    import ofa_triton  # noqa: F401
except ImportError:
    # On the GPU machine the project is not pip-installed: the source tree serves as is.
    sys.path.insert(0, str(ROOT / "src"))

from ofa_triton.manifest import sha256_file  # noqa: E402
from ofa_triton.server import TRITON_HOME_VARIABLE  # noqa: E402

DEFAULT_OUTPUT = ROOT / ".device-kit"
DEFAULT_DEST = ROOT / "work" / "device-kit"
KIT_FILE = "KIT.json"
# The repository's tracked files (~2 MB) and the kit travel together, 64 MiB at most.
KIT_LIMIT_BYTES = 56 * 2**20
BUILD_COMMAND = "make device-kit"

# CI runs Python 3.11, the GPU machine Python 3.12.
STUB_PYTHONS = ("3.11", "3.12")
STUB = "triton_python_backend_stub"
TRITONSERVER_ARCHIVE = "tritonserver.tar.xz"
PERF_ANALYZER_ARCHIVE = "perf_analyzer.tar.xz"
PACKAGES_ARCHIVE = "python-packages.tar.xz"
# The wheels' contents compress far better in one xz stream than zip-deflated one by one.
# (PRESET_EXTREME would save 0.1 MiB of 41 and take a fifth longer.)
XZ_PRESET = 9


@dataclass(frozen=True)
class KitWheel:
    name: str        # as pip and importlib.metadata know it
    version: str
    purpose: str


# The wheels for Python 3.12 that the GPU machine lacks. tritonclient's version is the
# project's pin (pyproject.toml).
def kit_wheels() -> tuple[KitWheel, ...]:
    return (
        KitWheel("numpy", "1.26.4", "the Triton 2.51 Python-backend stub crashes on BYTES "
                                    "inputs with numpy 2; the stub and the client load it"),
        KitWheel("tritonclient", pinned_version("tritonclient"),
                 "tritonclient.grpc and .http; its wheel carries perf_analyzer"),
        KitWheel("python-rapidjson", "1.25", "imported by tritonclient.grpc and .http"),
        # tritonclient.http: the benchmark's load generator and VisualEntailmentClient(http).
        KitWheel("gevent", "26.9.0", "imported by tritonclient.http"),
        KitWheel("greenlet", "3.5.6", "gevent needs it"),
        KitWheel("zope.event", "6.2", "gevent needs it"),
        KitWheel("zope.interface", "8.7", "gevent needs it"),
        KitWheel("geventhttpclient", "2.0.12", "imported by tritonclient.http (its pin, 2.0.2, "
                                              "has no Python 3.12 wheel; 2.0.12 is the last "
                                              "2.0 release)"),
        KitWheel("brotli", "1.2.1", "geventhttpclient imports it"),
        KitWheel("six", "1.17.0", "geventhttpclient imports it"),
    )


# pip, here, fetches the wheels for the GPU machine: Python 3.12 on x86-64 Linux.
PIP_TARGET = ["--python-version", "3.12", "--implementation", "cp",
              *[argument for platform in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                                          "manylinux2014_x86_64", "manylinux1_x86_64")
                for argument in ("--platform", platform)]]

# Left out of the packages: never imported when serving or measuring.
DROPPED_DIRECTORIES = ("tests",)
DROPPED_SUFFIXES = (".pyi", ".pxd")       # type stubs, Cython declarations
PERF_ANALYZER_MEMBER = "data/bin/perf_analyzer"

LDD_LINE = re.compile(r"^\s*(\S+) => (?:(not found)|(\S+) \(0x)")


class KitError(RuntimeError):
    """The kit cannot be built or unpacked; the message says what to do."""


ProgressFn = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Shared by build and unpack


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def linked_libraries(binary: Path, library_path: Iterable[Path]) -> dict[str, Path | None]:
    """Every library the dynamic loader loads for ``binary``, transitively, as ldd reports
    it with ``library_path`` as LD_LIBRARY_PATH: name -> file (None: not found)."""
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(map(str, library_path)))
    try:
        result = subprocess.run(["ldd", str(binary)], env=env, capture_output=True, text=True,
                                timeout=60)
    except FileNotFoundError as error:
        raise KitError("ldd is missing: it comes with glibc (Debian/Ubuntu: libc-bin)") from error
    if result.returncode != 0:
        raise KitError(f"ldd {binary} failed: {(result.stderr or result.stdout).strip()}")
    libraries = {}
    for line in result.stdout.splitlines():
        match = LDD_LINE.match(line)
        if match:
            libraries[match[1]] = None if match[2] else Path(match[3])
    return libraries


def missing_libraries(binary: Path, library_path: Iterable[Path]) -> list[str]:
    return sorted(name for name, path in linked_libraries(binary, library_path).items()
                  if path is None)


def perf_analyzer_vendored() -> dict[str, str]:
    """soname -> file-name prefix: what perf_analyzer asks for under a soname and
    benchmarks/perf.py links, at run time, to the kit's vendored copy."""
    from benchmarks.perf import VENDORED

    return dict(VENDORED)


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------------------------
# Build


def pinned_version(name: str) -> str:
    """The ``name==X`` pin of the serving extra in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["optional-dependencies"]["serve"]:
        match = re.fullmatch(rf"{re.escape(name)}(?:\[[^\]]*\])?==(\S+)", requirement)
        if match:
            return match[1]
    raise KitError(f"pyproject.toml's serve extra pins no {name}==X")


@dataclass(frozen=True)
class TritonSource:
    """The nvidia-pytriton wheel's tritonserver (``pytriton/tritonserver``) and its vendored
    libraries (``nvidia_pytriton.libs``), as installed by ``make setup``."""
    root: Path
    libraries: Path
    pytriton_version: str

    @classmethod
    def installed(cls) -> "TritonSource":
        wanted = pinned_version("nvidia-pytriton")
        try:
            import pytriton
            installed = metadata.version("nvidia-pytriton")
        except (ImportError, metadata.PackageNotFoundError) as error:
            raise KitError("nvidia-pytriton is not installed here: run make setup (the serve "
                           "extra brings it), then make device-kit") from error
        if installed != wanted:
            raise KitError(f"nvidia-pytriton {installed} is installed, pyproject.toml pins "
                           f"{wanted}: run make setup again")
        package = Path(pytriton.__file__).resolve().parent
        return cls(package / "tritonserver", package.parent / "nvidia_pytriton.libs", installed)

    def binaries(self) -> dict[str, Path]:
        """Kit path -> source file: the server, the Python backend, the kit's stubs."""
        files = {"triton/bin/tritonserver": self.root / "bin" / "tritonserver"}
        backend = self.root / "backends" / "python"
        for path in sorted(backend.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                files[f"triton/backends/python/{path.relative_to(backend)}"] = path
        for version in STUB_PYTHONS:
            files[f"triton/python_backend_stubs/{version}/{STUB}"] = (
                self.root / "python_backend_stubs" / version / STUB)
        for kit_path, path in files.items():
            if not path.is_file():
                raise KitError(f"{path} is missing (for {kit_path}): reinstall nvidia-pytriton "
                               "(make clean setup)")
        return files


def is_elf(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"\x7fELF"


def vendored_closure(binaries: Iterable[Path], libraries: Path) -> tuple[set[str], set[str]]:
    """(the vendored libraries that ``binaries`` load, transitively; the other libraries
    they load, which the GPU machine must have)."""
    vendored, system = set(), set()
    directory = libraries.resolve()
    for binary in filter(is_elf, binaries):
        for name, path in linked_libraries(binary, [libraries]).items():
            if path is not None and path.resolve().parent == directory:
                vendored.add(path.resolve().name)
            elif not name.startswith(("ld-linux", "linux-vdso")):
                system.add(name)
    return vendored, system


def download_wheels(wheels: Iterable[KitWheel], directory: Path,
                    progress: ProgressFn) -> dict[str, Path]:
    """name -> the Python 3.12 manylinux wheel, fetched with pip (whose own cache makes a
    rebuild download nothing)."""
    wheels = list(wheels)
    directory.mkdir(parents=True, exist_ok=True)
    requirements = [f"{wheel.name}=={wheel.version}" for wheel in wheels]
    progress(f"downloading {len(wheels)} wheels for Python 3.12: {', '.join(requirements)}")
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                             "--only-binary=:all:", *PIP_TARGET, "--disable-pip-version-check",
                             "-q", "-d", str(directory), *requirements],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise KitError(f"pip download failed (is PyPI reachable?):\n{result.stderr[-3000:]}")
    found = {}
    for wheel in wheels:
        prefix = f"{re.sub(r'[-_.]+', '_', wheel.name)}-{wheel.version}-".lower()
        matches = [p for p in directory.glob("*.whl") if p.name.lower().startswith(prefix)]
        if len(matches) != 1:
            raise KitError(f"pip saved {len(matches)} wheels for {wheel.name}=={wheel.version} "
                           f"in {directory}, not one")
        found[wheel.name] = matches[0]
    return found


def wheel_python(wheel: Path) -> str:
    """"any" for a wheel that any Python 3 imports, else the one version it was built for."""
    python_tag, abi_tag = wheel.stem.split("-")[-3:-1]
    if abi_tag == "none":
        return "any"
    match = re.fullmatch(r"cp(\d)(\d+)", python_tag)
    if not match:
        raise KitError(f"{wheel.name}: unexpected Python tag {python_tag}")
    return f"{match[1]}.{match[2]}"


def _normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """No owner and a fixed time: the same inputs give the same archive."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: io.BufferedIOBase, size: int,
               mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, mode
    tar.addfile(_normalized(info), data)


def _open_archive(path: Path) -> tarfile.TarFile:
    return tarfile.open(path, "w:xz", preset=XZ_PRESET, format=tarfile.PAX_FORMAT)


def pack_tritonserver(source: TritonSource, archive: Path, extra_binaries: Iterable[Path],
                      progress: ProgressFn) -> dict:
    """The server, backend and stubs, with the vendored libraries that they (and
    ``extra_binaries``: perf_analyzer) load."""
    files = source.binaries()
    kept, system = vendored_closure([*files.values(), *extra_binaries], source.libraries)
    for soname, prefix in perf_analyzer_vendored().items():
        if not any(name.startswith(prefix) for name in kept):
            raise KitError(f"no {prefix}* among the kept libraries: perf_analyzer needs it as "
                           f"{soname}")
    dropped = {}
    for path in sorted(source.libraries.iterdir()):
        if path.name not in kept:
            dropped[path.name] = (f"{mib(path.stat().st_size)}; none of tritonserver, "
                                  f"the Python backend, the {'/'.join(STUB_PYTHONS)} stubs and "
                                  "perf_analyzer loads it (ldd)")
    for name in sorted(kept):
        files[f"triton/lib/{name}"] = source.libraries / name
    size = sum(path.stat().st_size for path in files.values())
    progress(f"packing {archive.name}: tritonserver, the Python backend, stubs for "
             f"{', '.join(STUB_PYTHONS)}, {len(kept)} of {len(kept) + len(dropped)} vendored "
             f"libraries ({mib(size)}; xz takes about a minute)")
    for name, reason in dropped.items():
        progress(f"  left out {name}: {reason}")
    with _open_archive(archive) as tar:
        for kit_path, path in files.items():
            tar.add(path, kit_path, recursive=False, filter=_normalized)
    # As ldd saw them here; perf_analyzer's vendored sonames are linked by benchmarks/perf.py.
    system -= set(perf_analyzer_vendored())
    return {"libraries": sorted(kept), "dropped_libraries": dropped,
            "needs_from_the_machine": sorted(system)}


def _wheel_data_dir(zipped: zipfile.ZipFile) -> str | None:
    names = {name.split("/", 1)[0] for name in zipped.namelist()}
    return next((name for name in names if name.endswith(".data")), None)


def extract_perf_analyzer(tritonclient_wheel: Path, target: Path) -> Path:
    with zipfile.ZipFile(tritonclient_wheel) as zipped:
        data = _wheel_data_dir(zipped)
        member = f"{data}/{PERF_ANALYZER_MEMBER}"
        if data is None or member not in zipped.namelist():
            raise KitError(f"{tritonclient_wheel.name} holds no {PERF_ANALYZER_MEMBER}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipped.open(member) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out)
    target.chmod(0o755)
    return target


def pack_perf_analyzer(binary: Path, archive: Path, progress: ProgressFn) -> None:
    progress(f"packing {archive.name}: perf_analyzer ({mib(binary.stat().st_size)})")
    with _open_archive(archive) as tar:
        tar.add(binary, "bin/perf_analyzer", recursive=False, filter=_normalized)


def _dropped_reason(path: str) -> str | None:
    parts = path.split("/")
    if any(part in DROPPED_DIRECTORIES for part in parts[:-1]):
        return "tests"
    if path.endswith(DROPPED_SUFFIXES) or parts[0].endswith("-stubs"):
        return "type stubs and Cython declarations"
    return None


def wheel_members(zipped: zipfile.ZipFile) -> Iterable[tuple[zipfile.ZipInfo, str | None, str]]:
    """(member, its path in site-packages or None when left out, why)."""
    data = _wheel_data_dir(zipped)
    for info in zipped.infolist():
        if info.is_dir():
            continue
        path = info.filename
        if data and path.startswith(data + "/"):
            scheme, _, rest = path[len(data) + 1:].partition("/")
            if scheme in ("purelib", "platlib"):
                path = rest
            elif path.endswith(PERF_ANALYZER_MEMBER):
                yield info, None, f"in {PERF_ANALYZER_ARCHIVE}"
                continue
            elif path.endswith("/perf_client"):
                yield info, None, "perf_client (a byte-identical copy of perf_analyzer)"
                continue
            else:
                yield info, None, "other wheel data (C headers, a licence copy)"
                continue
        reason = _dropped_reason(path)
        yield info, (None if reason else path), reason or "kept"


def pack_python_packages(wheels: dict[str, Path], catalogue: tuple[KitWheel, ...],
                         archive: Path, progress: ProgressFn) -> list[dict]:
    """Each wheel's files under ``<name>-<version>/`` as they lie in site-packages."""
    packages = []
    with _open_archive(archive) as tar:
        for wheel in catalogue:
            root = f"{wheel.name}-{wheel.version}"
            kept_bytes, dropped = 0, {}
            with zipfile.ZipFile(wheels[wheel.name]) as zipped:
                for info, path, reason in wheel_members(zipped):
                    if path is None:
                        dropped[reason] = dropped.get(reason, 0) + info.file_size
                        continue
                    mode = (info.external_attr >> 16) & 0o777 or 0o644
                    with zipped.open(info) as data:
                        _add_bytes(tar, f"{root}/{path}", data, info.file_size, mode)
                    kept_bytes += info.file_size
            packages.append({"name": wheel.name, "version": wheel.version,
                             "python": wheel_python(wheels[wheel.name]),
                             "wheel": wheels[wheel.name].name, "root": root,
                             "purpose": wheel.purpose, "bytes": kept_bytes,
                             "left_out_bytes": dropped})
            left_out = ", ".join(f"{reason} {mib(size)}" for reason, size in dropped.items())
            progress(f"  {root} ({packages[-1]['python']}): {mib(kept_bytes)}"
                     + (f"; left out: {left_out}" if left_out else ""))
    return packages


def _describe_command() -> str:
    if os.environ.get("MAKELEVEL"):
        return BUILD_COMMAND
    return shlex.join(["python", "-m", "benchmarks.device.kit", *sys.argv[1:]])


def _replaceable(output: Path) -> None:
    if output.exists() and any(output.iterdir()) and not (output / KIT_FILE).is_file():
        raise KitError(f"{output} holds files but no {KIT_FILE}: it is not a kit, so it is not "
                       "replaced; choose another --output or empty it")


def _over_limit_message(files: dict[str, dict], total: int) -> str:
    sizes = ", ".join(f"{name} {mib(entry['bytes'])}" for name, entry in files.items())
    return (f"the kit is {mib(total)}, over the {mib(KIT_LIMIT_BYTES)} that may travel to the "
            f"GPU machine with the repository ({sizes}). Trim it in benchmarks/device/kit.py: "
            "a stub version (STUB_PYTHONS), the HTTP client wheels in kit_wheels() (gevent "
            "and what it needs), or more of the packages' files (DROPPED_*), then run "
            f"{BUILD_COMMAND} again")


def build_kit(output: Path = DEFAULT_OUTPUT, progress: ProgressFn = print,
              command: str | None = None) -> dict:
    """Write the kit into ``output`` (replacing a kit there) and return its KIT.json record.
    Downloads go to a scratch directory that is deleted afterwards."""
    from benchmarks.run import commit
    from ofa_triton.manifest import TRITON_VERSION

    started = time.monotonic()
    output = Path(output).resolve()
    _replaceable(output)
    source = TritonSource.installed()
    catalogue = kit_wheels()
    with tempfile.TemporaryDirectory(prefix="ofa-device-kit-") as scratch_name:
        scratch = Path(scratch_name)
        wheels = download_wheels(catalogue, scratch / "wheels", progress)
        kit = scratch / "kit"
        kit.mkdir()
        perf_analyzer = extract_perf_analyzer(wheels["tritonclient"],
                                              scratch / "bin" / "perf_analyzer")
        # The server's archive takes longest: it is compressed beside the others (lzma
        # releases the GIL while it compresses).
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as beside:
            packing = beside.submit(pack_tritonserver, source, kit / TRITONSERVER_ARCHIVE,
                                    [perf_analyzer], progress)
            pack_perf_analyzer(perf_analyzer, kit / PERF_ANALYZER_ARCHIVE, progress)
            progress(f"packing {PACKAGES_ARCHIVE}:")
            packages = pack_python_packages(wheels, catalogue, kit / PACKAGES_ARCHIVE, progress)
            triton = packing.result()
        files = {archive.name: {"bytes": archive.stat().st_size, "sha256": sha256_file(archive)}
                 for archive in sorted(kit.glob("*.tar.xz"))}
        record = {
            "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command or _describe_command(),
            "commit": commit(),
            "versions": {"triton": TRITON_VERSION, "nvidia-pytriton": source.pytriton_version,
                         **{wheel.name: wheel.version for wheel in catalogue}},
            "triton": {"version": TRITON_VERSION,
                       "source": f"nvidia-pytriton {source.pytriton_version}",
                       "python_backend_stubs": list(STUB_PYTHONS), **triton},
            "perf_analyzer": {"source": f"tritonclient {pinned_version('tritonclient')}",
                              "links": "benchmarks/perf.py links its "
                                       f"{' and '.join(perf_analyzer_vendored())} to triton/lib"},
            "packages": packages,
            "files": files,
            "total_bytes": sum(entry["bytes"] for entry in files.values()),
            "limit_bytes": KIT_LIMIT_BYTES,
        }
        (kit / KIT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        total = sum(path.stat().st_size for path in kit.iterdir())
        if total > KIT_LIMIT_BYTES:
            raise KitError(_over_limit_message(files, total))
        if output.exists():
            shutil.rmtree(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(kit), str(output))
    for name, entry in files.items():
        progress(f"  {name}: {mib(entry['bytes'])}")
    progress(f"kit: {mib(total)} of {mib(KIT_LIMIT_BYTES)} in {output} "
             f"({time.monotonic() - started:.0f} s)")
    return record


# ---------------------------------------------------------------------------------------------
# Unpack


def read_kit(kit: Path) -> dict:
    path = Path(kit) / KIT_FILE
    if not path.is_file():
        raise KitError(f"{path} is missing: build the kit with {BUILD_COMMAND} and bring the "
                       "whole directory")
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise KitError(f"{path} is not valid JSON ({error}): rebuild it with "
                       f"{BUILD_COMMAND}") from error


def verify_kit(kit: Path, record: dict) -> None:
    """Every file KIT.json lists, with its size and sha256."""
    for name, entry in record["files"].items():
        path = Path(kit) / name
        if not path.is_file():
            raise KitError(f"{path} is missing: copy the whole kit again")
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise KitError(f"{path} differs from {KIT_FILE} (size or sha256): it was damaged "
                           f"in transit or changed; copy it again or rebuild with "
                           f"{BUILD_COMMAND}")


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def choose_packages(packages: list[dict], python: str, progress: ProgressFn) -> set[str]:
    """The package roots to unpack for this interpreter: those it lacks at the kit's version,
    where the kit's wheel fits it."""
    chosen = set()
    for package in packages:
        label = f"{package['name']} {package['version']}"
        installed = _installed_version(package["name"])
        if installed == package["version"]:
            progress(f"  {label}: this Python has it")
        elif package["python"] in ("any", python):
            chosen.add(package["root"])
            progress(f"  {label}: unpacked" + (f" (ahead of this Python's {installed})"
                                               if installed else ""))
        elif installed:
            progress(f"  {label} is for Python {package['python']}: this Python's "
                     f"{installed} is used")
        else:
            raise KitError(f"{label} in this kit is for Python {package['python']}, and this "
                           f"Python {python} has no {package['name']}: pip install "
                           f"'{package['name']}=={package['version']}', or unpack with "
                           f"Python {package['python']}")
    return chosen


def _extract(archive: Path, dest: Path, place: Callable[[str], str | None]) -> None:
    """Extract the members that ``place`` maps to a path under ``dest`` (None: skipped),
    with tarfile's "data" filter (nothing outside ``dest``, no devices, no set-uid bits)."""
    def placed(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        target = place(member.name)
        if target is None:
            return None
        return tarfile.data_filter(member.replace(name=target, deep=False), path)

    with tarfile.open(archive, "r:xz") as tar:
        tar.extractall(dest, filter=placed)


# The kit's Python: a virtual environment of the interpreter that unpacked the kit, whose
# site-packages hold the kit's packages and then lead (one .pth file) to the project's source
# and to that interpreter's own site-packages.
#
# Why not PYTHONPATH: the Python-backend stubs run an isolated interpreter (seen in a stub,
# Triton 2.51: sys.flags.isolated=1, ignore_environment=1), which ignores PYTHONPATH. Its
# sys.path is that of the first ``python3`` on PATH, found with its virtual environment, and
# ofa_triton.server puts the directory of the interpreter that starts the server first on
# the server's PATH. Started with the kit's Python, the stubs see numpy 1.26.4 first.
KIT_PYTHON = "python"
CHAIN_FILE = "ofa-device-kit.pth"


def _site_packages(environment_dir: Path) -> Path:
    return Path(sysconfig.get_path("purelib", scheme="venv",
                                   vars={"base": str(environment_dir),
                                         "platbase": str(environment_dir)}))


def _runs_inside(environment_dir: Path) -> bool:
    return Path(sys.prefix).resolve() == environment_dir.resolve()


def make_kit_python(environment_dir: Path) -> Path:
    """The virtual environment (no pip) and its chain to the source and this interpreter's
    site-packages; returns its site-packages, where the kit's packages go."""
    import venv

    chained = [str(ROOT / "src")] + [f"import site; site.addsitedir({path!r})"
                                     for path in site_packages_of_this_python()]
    venv.EnvBuilder(symlinks=True, with_pip=False, clear=True).create(environment_dir)
    site_packages = _site_packages(environment_dir)
    (site_packages / CHAIN_FILE).write_text("\n".join(chained) + "\n")
    return site_packages


def site_packages_of_this_python() -> list[str]:
    return [path for path in site.getsitepackages() if Path(path).is_dir()]


def check_loadable(dest: Path, python: str) -> None:
    """Every library that the server, the Python backend, this Python's stub and perf_analyzer
    load can be found, as ofa_triton.server and benchmarks/perf.py start them: the kit's lib/
    and this interpreter's LIBDIR (its libpython) ahead of LD_LIBRARY_PATH."""
    existing = [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    libdir = sysconfig.get_config_var("LIBDIR")
    server_path = [dest / "triton" / "lib", *([Path(libdir)] if libdir else []), *existing]
    checks = {dest / "triton" / "bin" / "tritonserver": (server_path, ()),
              dest / "triton" / "backends" / "python" / "libtriton_python.so": (server_path, ()),
              dest / "triton" / "python_backend_stubs" / python / STUB: (server_path, ()),
              dest / "bin" / "perf_analyzer": (existing, tuple(perf_analyzer_vendored()))}
    problems = []
    for binary, (path, linked_later) in checks.items():
        missing = [name for name in missing_libraries(binary, path) if name not in linked_later]
        if missing:
            problems.append(f"{binary.relative_to(dest)} needs {', '.join(missing)}")
    if problems:
        raise KitError("this machine lacks libraries that the kit does not carry: "
                       + "; ".join(problems) + ". libpythonX.Y.so comes with the Python "
                       "installation (Debian/Ubuntu: the libpythonX.Y package); run unpack "
                       "with a Python that has it, or install what is missing")


def environment(dest: Path) -> dict[str, str]:
    """The variables to export: the kit's Python and perf_analyzer first on PATH, and the
    kit's tritonserver."""
    first = [str(dest / KIT_PYTHON / "bin"), str(dest / "bin")]
    rest = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p not in first]
    return {TRITON_HOME_VARIABLE: str(dest / "triton"), "PATH": os.pathsep.join(first + rest)}


def unpack_kit(kit: Path = DEFAULT_OUTPUT, dest: Path = DEFAULT_DEST,
               progress: ProgressFn = print) -> dict[str, str]:
    """Check the kit against KIT.json, unpack it into ``dest`` for this interpreter (once: an
    unchanged kit is not unpacked again) and return the environment variables to set.

    ``dest``: ``triton/`` (for $OFA_TRITON_HOME), ``bin/perf_analyzer``, and ``python/``: the
    kit's Python (``python/bin/python3``), this interpreter with the kit's packages first."""
    kit, dest = Path(kit).resolve(), Path(dest).resolve()
    record = read_kit(kit)
    verify_kit(kit, record)
    python = python_version()
    stubs = record["triton"]["python_backend_stubs"]
    if python not in stubs:
        raise KitError(f"this kit holds backend stubs for Python {' and '.join(stubs)}, not "
                       f"{python}: run unpack with one of those")
    marker = dest / ".unpacked.json"
    stamp = {"kit_sha256": sha256_file(kit / KIT_FILE), "python": sys.executable}
    previous = json.loads(marker.read_text()) if marker.is_file() else None
    if previous and previous["kit_sha256"] == stamp["kit_sha256"] and (
            previous["python"] == stamp["python"] or _runs_inside(dest / KIT_PYTHON)):
        progress(f"{dest}: already unpacked from this kit for {previous['python']}")
        return environment(dest)
    if _runs_inside(dest / KIT_PYTHON):
        raise KitError(f"this is the kit's own Python ({sys.executable}); run unpack with the "
                       "machine's python3 (the one with torch)")
    marker.unlink(missing_ok=True)
    for stale in ("triton", "bin"):
        shutil.rmtree(dest / stale, ignore_errors=True)
    progress(f"unpacking {kit} into {dest}")
    _extract(kit / TRITONSERVER_ARCHIVE, dest,
             lambda name: name if name.startswith("triton/") else None)
    _extract(kit / PERF_ANALYZER_ARCHIVE, dest, lambda name: name)
    check_loadable(dest, python)
    chosen = choose_packages(record["packages"], python, progress)
    site_packages = make_kit_python(dest / KIT_PYTHON)
    prefix = os.path.relpath(site_packages, dest)

    def into_site_packages(name: str) -> str | None:
        root, _, rest = name.partition("/")
        return f"{prefix}/{rest}" if root in chosen and rest else None

    if chosen:
        _extract(kit / PACKAGES_ARCHIVE, dest, into_site_packages)
    marker.write_text(json.dumps(stamp))
    progress(f"unpacked tritonserver {record['triton']['version']} into {dest / 'triton'}, "
             f"perf_analyzer into {dest / 'bin'}, and the kit's Python "
             f"({dest / KIT_PYTHON / 'bin' / 'python3'}: this Python with {len(chosen)} of the "
             "kit's packages first)")
    return environment(dest)


# ---------------------------------------------------------------------------------------------
# Smoke check


def smoke_check(repository: Path, workdir: Path, image: Path | None = None,
                hypothesis: str | None = None, premise: str | None = None) -> dict:
    """Serve ``repository`` with the tritonserver that $OFA_TRITON_HOME names, send one request
    over gRPC and run perf_analyzer once at concurrency 1; what ran, and what came back. The
    request: ``image`` and the texts, or else the benchmark's first request."""
    import numpy

    from benchmarks.inputs import build_requests, write_perf_analyzer_inputs
    from benchmarks.perf import perf_analyzer_binary, run_perf_analyzer
    from ofa_triton.tasks.visual_entailment.client import VisualEntailmentClient
    from ofa_triton.server import ServerOptions, TritonServer, find_triton

    workdir.mkdir(parents=True, exist_ok=True)
    requests = build_requests(count=4)
    request = (requests[0] if image is None else
               {"image": Path(image).read_bytes(), "hypothesis": hypothesis, "premise": premise})
    inputs = write_perf_analyzer_inputs(requests, workdir / "perf_analyzer_inputs.json")
    with TritonServer(ServerOptions.loopback(repository),
                      log_path=workdir / "tritonserver.log") as server:
        server.wait_ready()
        with VisualEntailmentClient(server.grpc_url, "grpc") as client:
            prediction = client.predict(request["image"], request["hypothesis"],
                                        request["premise"])
        row = run_perf_analyzer(server.grpc_url, inputs, 1, workdir / "perf_analyzer_c1.csv",
                                workdir, measurement_ms=2000)
    return {"python": sys.executable, "numpy": numpy.__version__,
            "tritonserver": str(find_triton().binary),
            "perf_analyzer": str(perf_analyzer_binary()),
            "prediction": prediction.to_dict(), "perf_analyzer_c1": row}


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device.kit",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help=f"write the kit ({BUILD_COMMAND} runs this)")
    build.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    unpack = commands.add_parser("unpack", help="check and unpack the kit; prints the "
                                                "'export NAME=value' lines for a shell to eval")
    unpack.add_argument("--kit", type=Path, default=DEFAULT_OUTPUT)
    unpack.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    smoke = commands.add_parser("smoke", help="serve a model repository with the kit (after "
                                              "unpack's exports), one gRPC request and "
                                              "perf_analyzer at concurrency 1; prints JSON")
    smoke.add_argument("--repository", type=Path, required=True)
    smoke.add_argument("--workdir", type=Path, default=ROOT / "work" / "device-smoke")
    smoke.add_argument("--image", type=Path)
    smoke.add_argument("--hypothesis")
    smoke.add_argument("--premise")
    args = parser.parse_args(argv)
    if args.command == "smoke" and (args.image is None) != (args.hypothesis is None):
        parser.error("--image and --hypothesis go together")

    def to_stderr(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        if args.command == "build":
            build_kit(args.output, progress=lambda message: print(message, flush=True))
        elif args.command == "smoke":
            result = smoke_check(args.repository, args.workdir, args.image, args.hypothesis,
                                 args.premise)
            print(json.dumps(result, indent=2))
        else:
            # stdout carries only the exports, for eval.
            for name, value in unpack_kit(args.kit, args.dest, progress=to_stderr).items():
                print(f"export {name}={shlex.quote(value)}")
    except KitError as error:
        to_stderr(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
