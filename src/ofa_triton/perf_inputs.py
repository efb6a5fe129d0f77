"""perf_analyzer's ``--input-data`` JSON for the four public models (``ofa-triton
perf-inputs``, ``ofa-triton perf`` without ``--input-data``, the benchmarks).

The inputs: ``{"data": [{<input>: {"content": ..., "shape": [1]}, ...}, ...]}``, one entry per
request, which perf_analyzer cycles through. Every input is a BYTES element; its content is
``{"b64": ...}`` whose decoded bytes already carry the element's 4-byte little-endian length
(perf_analyzer sends b64 content as it is). Every entry has every input of the model
(perf_analyzer needs the same inputs in each): entailment's optional premise is sent empty
(the hypothesis-only prompt) when a request has none. The input names are those of the public
model's config template (``model_repository/<task>/<public model>/config.pbtxt``).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path

from .limits import DEFAULT_IMAGE_FORMATS, DEFAULT_MAX_TEXT_CHARS
from .synthetic import photo_like_jpegs
from .tasks import DEFAULT_TASK, TASKS, OfaTask, task_named
from .warmup import serialize_strings

IMAGE_INPUT = "image"
DEFAULT_COUNT = 16
DEFAULT_SEED = 1000


class PerfInputsError(ValueError):
    """Inputs perf_analyzer could not be given (an empty folder, an unreadable image, ...)."""


# ---------------------------------------------------------------------------------------------
# The public models' inputs


@dataclasses.dataclass(frozen=True)
class ModelInput:
    name: str
    optional: bool = False


_INPUT_BLOCK = re.compile(r"^input\s*\[(.*?)^\]", re.MULTILINE | re.DOTALL)
_INPUT_ENTRY = re.compile(r"\{([^{}]*)\}")


def model_inputs(task: OfaTask) -> tuple[ModelInput, ...]:
    """The inputs of ``task``'s public model, in its config template's order: the image and
    the task's texts, all BYTES [1]."""
    from .triton_config import template_directory

    path = template_directory() / task.template_folder / task.public_model / "config.pbtxt"
    block = _INPUT_BLOCK.search(path.read_text())
    inputs = []
    for entry in _INPUT_ENTRY.findall(block.group(1) if block else ""):
        name = re.search(r'name:\s*"([^"]+)"', entry)
        kind = re.search(r"data_type:\s*(\w+)", entry)
        dims = re.search(r"dims:\s*\[([^\]]*)\]", entry)
        if not (name and kind and dims) or kind[1] != "TYPE_STRING" or dims[1].split() != ["1"]:
            raise RuntimeError(f"{path}: input {entry.strip()!r} is not a TYPE_STRING [1] "
                               "(ofa_triton.perf writes only those)")
        inputs.append(ModelInput(name[1], bool(re.search(r"optional:\s*true", entry))))
    if not inputs or inputs[0].name != IMAGE_INPUT:
        raise RuntimeError(f"{path}: found no input block starting with {IMAGE_INPUT!r}")
    return tuple(inputs)


def text_inputs(task: OfaTask) -> tuple[ModelInput, ...]:
    """The task's text inputs (every input but the image)."""
    return tuple(item for item in model_inputs(task) if item.name != IMAGE_INPUT)


def task_of_model(model: str) -> OfaTask:
    """The task whose public model ``model`` is, with or without an export's --name-prefix
    (``large_ofa_visual_entailment``)."""
    for task in TASKS.values():
        if model == task.public_model or model.endswith("_" + task.public_model):
            return task
    raise PerfInputsError(
        f"cannot write inputs for model {model!r}: it is none of the public models ("
        + ", ".join(task.public_model for task in TASKS.values())
        + ", with or without an export's --name-prefix); for another model, write "
        "perf_analyzer's --input-data file yourself")


def resolve_task(model: str | None = None, task: str | None = None) -> OfaTask:
    """``--model`` or ``--task`` (not both); neither: the default task."""
    if model and task:
        raise PerfInputsError("give --model or --task, not both")
    return task_of_model(model) if model else task_named(task or DEFAULT_TASK)


# ---------------------------------------------------------------------------------------------
# Requests: generated photo-like images with natural texts, or the user's own

# Visual entailment's (hypothesis, premise); None: the hypothesis-only prompt.
TEXTS = [
    ("Two men are playing soccer on a green field.", "People are playing a sport."),
    ("A woman in a red coat walks her dog in the park.", "A dog is outside."),
    ("A child is eating ice cream on a sunny day.", "The child is sleeping."),
    ("A group of friends sit around a campfire at night.", None),
    ("An old man is reading a newspaper on a bench.", "A man is reading."),
    ("Cars are stuck in traffic on a busy highway.", "The road is empty."),
    ("A chef prepares food in a restaurant kitchen.", None),
    ("Two cats are sleeping on a sofa near the window.", "Animals are resting indoors."),
]
# Questions (VQA) and regions (grounding) of the same scenes.
QUESTIONS = ["What are the men playing?", "what color is the woman's coat", "What is the child "
             "eating?", "how many people are sitting around the fire?", "What is the old man "
             "reading?", "is the road busy", "where is the chef working?",
             "how many cats are on the sofa?"]
REGIONS = ["the man kicking the ball", "the woman in the red coat", "the child with ice cream",
           "the campfire in the middle", "the newspaper", "the red car on the left",
           "the chef's hands", "the cat near the window"]


def _builtin_texts(index: int) -> dict[str, str | None]:
    """Request ``index``'s built-in texts, under the public models' input names."""
    hypothesis, premise = TEXTS[index % len(TEXTS)]
    return {"hypothesis": hypothesis, "premise": premise,
            "question": QUESTIONS[index % len(QUESTIONS)], "text": REGIONS[index % len(REGIONS)]}


def build_requests(count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED,
                   images: Sequence[bytes] | None = None,
                   texts: Sequence[dict[str, str | None]] | None = None) -> list[dict]:
    """Requests carrying every task's inputs: ``image``, ``hypothesis`` and ``premise``
    (entailment), ``question`` (VQA) and ``text`` (grounding).

    ``images``: the requests' images (default: ``count`` generated photo-like JPEGs, a
    different one per request); ``texts``: each request's texts, overriding the built-in ones.
    With both, there are as many requests as the longer list, the shorter one cycled."""
    if images is None:
        images = photo_like_jpegs(count, seed)
    if not images:
        raise PerfInputsError("no images")
    total = max(len(images), len(texts)) if texts else len(images)
    requests = []
    for index in range(total):
        request = {IMAGE_INPUT: images[index % len(images)], **_builtin_texts(index)}
        if texts:
            request.update(texts[index % len(texts)])
        requests.append(request)
    return requests


def _image_extensions() -> set[str]:
    """File extensions of the formats the service accepts by default (.jpg, .png, .webp, ...)."""
    from PIL import Image

    Image.init()
    return {extension for extension, image_format in Image.registered_extensions().items()
            if image_format in DEFAULT_IMAGE_FORMATS}


def read_images(path: Path) -> list[tuple[Path, bytes]]:
    """The images of folder ``path`` (not its subfolders; by extension, sorted), or the one
    image file ``path``, each checked as the service checks it (format, size, complete)."""
    from .image import ImageDecodeError, decode_image

    path = Path(path)
    extensions = _image_extensions()
    if path.is_dir():
        files = sorted(item for item in path.iterdir()
                       if item.is_file() and item.suffix.lower() in extensions
                       and not item.name.startswith("."))
        if not files:
            raise PerfInputsError(f"--images {path}: no images in that folder (looked for "
                                  f"{', '.join(sorted(extensions))})")
    elif path.is_file():
        files = [path]
    else:
        raise PerfInputsError(f"--images {path}: no such folder")
    images = []
    for file in files:
        try:
            data = file.read_bytes()
        except OSError as error:
            raise PerfInputsError(f"--images: cannot read {file}: {error.strerror}") from None
        try:
            decode_image(data)
        except ImageDecodeError as error:
            raise PerfInputsError(f"--images: {file} would be refused by the server: "
                                  f"{error}") from None
        images.append((file, data))
    return images


def read_texts(path: Path, task: OfaTask) -> list[dict[str, str | None]]:
    """``task``'s texts, one request per non-blank line of ``path`` (UTF-8). A line holds the
    task's text inputs in order, separated by tabs; the optional ones may be left out
    (entailment: ``hypothesis`` or ``hypothesis<TAB>premise``)."""
    names = text_inputs(task)
    if not names:
        raise PerfInputsError(f"--texts: {task.public_model} takes no text (its only input is "
                              f"the {IMAGE_INPUT}); leave --texts out")
    path = Path(path)
    try:
        lines = path.read_text("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise PerfInputsError(f"--texts {path}: not UTF-8 text ({error.reason} at byte "
                              f"{error.start})") from None
    except OSError as error:
        raise PerfInputsError(f"--texts {path}: {error.strerror}") from None
    spelled = "<TAB>".join(item.name for item in names)
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) > len(names):
            raise PerfInputsError(f"--texts {path}, line {number}: {len(columns)} tab-separated "
                                  f"texts, but {task.public_model} takes {len(names)} per "
                                  f"line ({spelled})")
        columns += [""] * (len(names) - len(columns))
        for item, value in zip(names, columns):
            if not value.strip() and not item.optional:
                raise PerfInputsError(f"--texts {path}, line {number}: the {item.name} is empty")
            if len(value) > DEFAULT_MAX_TEXT_CHARS:
                raise PerfInputsError(f"--texts {path}, line {number}: the {item.name} is "
                                      f"{len(value):,} characters, over the server's default "
                                      f"limit of {DEFAULT_MAX_TEXT_CHARS:,}")
        texts.append({item.name: value.strip() for item, value in zip(names, columns)})
    if not texts:
        raise PerfInputsError(f"--texts {path}: no texts in it (one {spelled} per line)")
    return texts


# ---------------------------------------------------------------------------------------------
# perf_analyzer's --input-data


def _length_prefixed_b64(value: bytes) -> dict:
    return {"b64": base64.b64encode(serialize_strings([value])).decode()}


def _element(value: bytes | str | None) -> bytes:
    if value is None:
        return b""
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def perf_analyzer_data(requests: Sequence[dict], inputs: Sequence[str]) -> dict:
    """perf_analyzer's --input-data document: one "data" entry per request, with ``inputs``."""
    data = []
    for index, request in enumerate(requests):
        missing = [name for name in inputs if name not in request]
        if missing:
            raise PerfInputsError(f"request {index} has no {', '.join(missing)}")
        data.append({name: {"content": _length_prefixed_b64(_element(request[name])),
                            "shape": [1]} for name in inputs})
    return {"data": data}


def write_perf_analyzer_inputs(requests: Sequence[dict], path: Path,
                               inputs: Sequence[str] | None = None) -> Path:
    """Write the --input-data file for ``requests`` with the public model's ``inputs``
    (default: visual entailment's; captioning: the image only)."""
    if inputs is None:
        inputs = [item.name for item in model_inputs(task_named(DEFAULT_TASK))]
    path = Path(path)
    path.write_text(json.dumps(perf_analyzer_data(requests, inputs)))
    return path


@dataclasses.dataclass(frozen=True)
class InputsSummary:
    path: Path
    model: str
    inputs: tuple[str, ...]
    requests: int
    images: str     # where the images came from
    texts: str      # where the texts came from


def write_model_inputs(path: Path, task: OfaTask, images: Path | None = None,
                       texts: Path | None = None, count: int | None = None,
                       seed: int = DEFAULT_SEED) -> InputsSummary:
    """The --input-data file for ``task``'s public model: the images of folder ``images``
    (default: ``count`` generated photo-like JPEGs, 16 unless given) and the texts of file
    ``texts`` (default: built-in sentences, questions or region descriptions). ``count``
    with ``images``: at most that many requests."""
    if count is not None and count < 1:
        raise PerfInputsError(f"--count must be at least 1, not {count}")
    names = tuple(item.name for item in model_inputs(task))
    text_list = read_texts(texts, task) if texts is not None else None
    if images is not None:
        files = read_images(images)
        image_list = [data for _, data in files]
        image_source = f"{len(files)} image(s) from {images}"
    else:
        image_list = photo_like_jpegs(count or DEFAULT_COUNT, seed)
        image_source = f"{len(image_list)} generated photo-like JPEG(s)"
    requests = build_requests(images=image_list, texts=text_list)
    if count is not None:
        requests = requests[:count]
    text_source = ("none" if len(names) == 1 else
                   f"{len(text_list)} line(s) of {texts}" if text_list else "built-in")
    write_perf_analyzer_inputs(requests, path, names)
    return InputsSummary(Path(path), task.public_model, names, len(requests), image_source,
                         text_source)
