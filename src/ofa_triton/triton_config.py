"""Lay out the Triton model repository from the templates in ``model_repository/``.

The templates (config.pbtxt with ``$name`` placeholders, and each model's ``1/model.py``) are
source files of this project; the export renders the configs with the checkpoint's shapes
and the serving options, and copies each model.py into the version directory it writes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import string
from pathlib import Path

from .runtime import TORCH_COMPILE_MODES, parse_batch_sizes
from .settings import ServingSettings
from .tasks import DEFAULT_TASK, OfaTask, task_named

# Triton takes any directory name; this keeps names safe in URLs, metrics labels and shells.
NAME_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# The default task's public model (CLI and client defaults).
ENSEMBLE_MODEL = task_named(DEFAULT_TASK).public_model


def template_directory() -> Path:
    """``model_repository/`` of the source tree (or $OFA_TRITON_TEMPLATES): one folder per task,
    in it one folder per Triton model."""
    configured = os.environ.get("OFA_TRITON_TEMPLATES")
    directory = Path(configured) if configured else Path(__file__).resolve().parents[2] / "model_repository"
    default = task_named(DEFAULT_TASK)
    if not (directory / default.template_folder / default.public_model / "config.pbtxt").is_file():
        raise FileNotFoundError(
            f"the model-repository templates are not at {directory}; run from a source "
            "checkout (pip install -e .) or set OFA_TRITON_TEMPLATES to its model_repository/")
    return directory


def task_templates(task: OfaTask) -> tuple[str, ...]:
    """The Triton models of ``task``: its template folders, sorted."""
    folder = template_directory() / task.template_folder
    return tuple(sorted(p.name for p in folder.iterdir() if (p / "config.pbtxt").is_file()))


@dataclasses.dataclass(frozen=True)
class ModelNames:
    """The served names of one export: the task's Triton models, with a prefix ("large_") that
    lets several checkpoints share one repository and one server
    (large_ofa_visual_entailment beside ofa_visual_entailment)."""

    prefix: str = ""
    task: str = DEFAULT_TASK

    def __post_init__(self):
        if self.prefix and not NAME_PREFIX_PATTERN.fullmatch(self.prefix):
            raise ValueError(f"name prefix {self.prefix!r}: use letters, digits, '_', '.' and "
                             "'-', starting with a letter or digit (for example 'large_')")

    @property
    def ofa_task(self) -> OfaTask:
        return task_named(self.task)

    def step(self, template: str) -> str:
        """The served name of one of the task's models (its template folder's name)."""
        if template not in task_templates(self.ofa_task):
            raise KeyError(f"{self.task} has no Triton model {template!r}")
        return self.prefix + template

    @property
    def encoder_decoder(self) -> str:
        return self.step(self.ofa_task.encoder_decoder_model)

    @property
    def preprocess(self) -> str:
        return self.step(self.ofa_task.preprocess_model)

    @property
    def ensemble(self) -> str:
        return self.prefix + self.ofa_task.public_model

    def by_template(self) -> dict[str, str]:
        """{template folder: served name} for the task's models."""
        return {template: self.prefix + template for template in task_templates(self.ofa_task)}


def check_output_directory(repository: Path) -> None:
    """Refuse to export into the templates themselves."""
    if Path(repository).resolve() == template_directory().resolve():
        raise ValueError(f"{repository} holds the model-repository templates; export into "
                         "another directory (for example work/model_repository)")


@dataclasses.dataclass(frozen=True)
class ServingOptions:
    """Export parameters of the Triton side."""

    device: str = "cpu"                 # "cpu": KIND_CPU everywhere; "gpu": encoder-decoder KIND_GPU
    max_batch_size: int = 32
    queue_delay_us: int = 2000          # how long a step waits to grow a batch
    preprocess_instances: int = 2       # CPU instances (per server)
    encoder_decoder_instances: int = 1  # per GPU with device=gpu, per server with device=cpu
    postprocess_instances: int = 1
    intra_op_threads: int = 0           # CPU threads per encoder-decoder instance; 0: all cores
    max_queue_size: int = 256           # requests waiting per step before new ones are refused
    queue_timeout_us: int = 0           # longest wait in a step's queue; 0: no limit
    name_prefix: str = ""               # prepended to the four model names
    # The PyTorch runtime on GPUs: batch sizes captured as CUDA graphs ("auto": powers of two
    # up to max_batch_size; "": none), and the torch.compile mode ("none": eager kernels).
    cuda_graph_batch_sizes: str = "auto"
    torch_compile: str = "none"

    def for_runtime(self, runtime: str) -> "ServingOptions":
        """These options with "auto" resolved for ``runtime`` (what the config will say)."""
        if self.cuda_graph_batch_sizes != "auto":
            return self
        graphs = runtime == "torch" and self.device == "gpu"
        return dataclasses.replace(self, cuda_graph_batch_sizes=",".join(
            map(str, power_of_two_buckets(self.max_batch_size))) if graphs else "")

    def names(self, task: str = DEFAULT_TASK) -> ModelNames:
        return ModelNames(self.name_prefix, task)

    def __post_init__(self):
        self.names()  # validates the prefix
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', not {self.device!r}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            minimum = 0 if field.name in ("queue_delay_us", "intra_op_threads", "max_queue_size",
                                          "queue_timeout_us") else 1
            if isinstance(value, int) and value < minimum:
                raise ValueError(f"{field.name} must be positive, got {value}")
        if self.torch_compile not in TORCH_COMPILE_MODES:
            raise ValueError(f"torch_compile must be one of {TORCH_COMPILE_MODES}, not "
                             f"{self.torch_compile!r}")
        if self.cuda_graph_batch_sizes != "auto":
            parse_batch_sizes(self.cuda_graph_batch_sizes, self.max_batch_size)


def power_of_two_buckets(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... up to and including max_batch_size."""
    buckets = [1]
    while buckets[-1] < max_batch_size:
        buckets.append(min(buckets[-1] * 2, max_batch_size))
    return buckets


@dataclasses.dataclass(frozen=True)
class ServedVersions:
    """Which version directories the configs name: every step loads ``serving`` (and, while a
    deploy is under way, ``loading`` beside it); the ensemble runs ``serving``; rollback goes
    back to ``previous``."""

    serving: int
    previous: int | None = None
    loading: int | None = None

    @property
    def step_versions(self) -> list[int]:
        return sorted({self.serving} | ({self.loading} if self.loading else set()))


# The lines of the rendered configs that name versions (see the templates).
_STEP_VERSIONS = re.compile(r"^version_policy: \{ specific: \{ versions: \[ ([0-9, ]+) \] \} \}$",
                            re.MULTILINE)
_ENSEMBLE_VERSION = re.compile(r"^(\s*model_version: )(-?\d+)$", re.MULTILINE)
_PREVIOUS_VERSION = re.compile(r'(key: "previous_version", value: \{ string_value: ")(\d*)(")')
_STEP_NAME = re.compile(r'^\s*model_name: "([^"]+)"$', re.MULTILINE)


def ensemble_steps(repository: Path, ensemble: str) -> list[str]:
    """The composing models named by an exported ensemble's config.pbtxt."""
    path = Path(repository) / ensemble / "config.pbtxt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {ensemble} is not exported in "
                                f"{repository}")
    return _STEP_NAME.findall(path.read_text())


def ensemble_models(repository: Path) -> list[str]:
    """The ensembles of a model repository (any task, any name prefix), sorted."""
    return sorted(path.parent.name for path in Path(repository).glob("*/config.pbtxt")
                  if re.search(r'^platform: "ensemble"$', path.read_text(), re.MULTILINE))


def read_served_versions(repository: Path, ensemble: str) -> ServedVersions | None:
    """What the repository's configs serve; None for a repository without the models."""
    path = Path(repository) / ensemble / "config.pbtxt"
    if not path.is_file():
        return None
    text = path.read_text()
    versions = {int(version) for _, version in _ENSEMBLE_VERSION.findall(text)}
    previous = _PREVIOUS_VERSION.search(text)
    if len(versions) != 1 or -1 in versions or previous is None:
        raise ValueError(f"{path} does not pin one version for its steps (an export by an "
                         "older ofa-triton?); re-export the repository")
    return ServedVersions(serving=versions.pop(),
                          previous=int(previous.group(2)) if previous.group(2) else None)


def _replace_file(path: Path, text: str) -> None:
    """Write beside and rename: a server loading the model never reads half a file."""
    if path.read_text() == text:
        return   # an unchanged file keeps its mtime, so Triton sees no change to reload
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(text)
    os.replace(scratch, path)


def write_served_versions(repository: Path, ensemble: str, served: ServedVersions) -> None:
    """Point the configs of ``ensemble`` and its steps at ``served``. The steps first: the
    ensemble must never name a version its steps do not load."""
    repository = Path(repository)
    for step in ensemble_steps(repository, ensemble):
        path = repository / step / "config.pbtxt"
        text, count = _STEP_VERSIONS.subn(
            "version_policy: { specific: { versions: [ "
            + ", ".join(map(str, served.step_versions)) + " ] } }", path.read_text())
        if count != 1:
            raise ValueError(f"{path} has no version_policy line to rewrite; re-export it")
        _replace_file(path, text)
    path = repository / ensemble / "config.pbtxt"
    text = _ENSEMBLE_VERSION.sub(lambda m: f"{m.group(1)}{served.serving}", path.read_text())
    text = _PREVIOUS_VERSION.sub(
        lambda m: f"{m.group(1)}{served.previous or ''}{m.group(3)}", text)
    _replace_file(path, text)


def render_configs(settings: ServingSettings, options: ServingOptions, served: ServedVersions,
                   names: ModelNames) -> dict[str, str]:
    """{template: rendered config.pbtxt} for the task's models."""
    values = {
        "max_batch_size": options.max_batch_size,
        "queue_delay_us": options.queue_delay_us,
        "source_length": settings.task.source_length,
        "decoder_length": settings.task.decoder_length,
        "image_size": settings.task.patch_image_size,
        "preprocess_instances": options.preprocess_instances,
        "encoder_decoder_instances": options.encoder_decoder_instances,
        "encoder_decoder_kind": "KIND_GPU" if options.device == "gpu" else "KIND_CPU",
        "postprocess_instances": options.postprocess_instances,
        "intra_op_threads": options.intra_op_threads,
        "cuda_graph_batch_sizes": options.cuda_graph_batch_sizes,
        "torch_compile": options.torch_compile,
        "max_queue_size": options.max_queue_size,
        "queue_timeout_us": options.queue_timeout_us,
        "step_versions": ", ".join(map(str, served.step_versions)),
        "serving_version": served.serving,
        "previous_version": served.previous or "",
        **names.ofa_task.config_values(settings),
        **{f"{template.removeprefix('ofa_')}_model": name
           for template, name in names.by_template().items()},
    }
    folder = template_directory() / names.ofa_task.template_folder
    return {template: string.Template((folder / template / "config.pbtxt").read_text())
            .substitute(values) for template in names.by_template()}


def write_model_files(repository: Path, version: int, settings: ServingSettings,
                      options: ServingOptions, served: ServedVersions, names: ModelNames) -> None:
    """config.pbtxt of every model of the task (serving ``served``), and each Python model's
    model.py in ``version``."""
    folder = template_directory() / names.ofa_task.template_folder
    for template, config in render_configs(settings, options, served, names).items():
        model_dir = repository / names.by_template()[template]
        (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
        (model_dir / "config.pbtxt").write_text(config)
        source = folder / template / "1" / "model.py"
        if source.is_file():
            shutil.copyfile(source, model_dir / str(version) / "model.py")
