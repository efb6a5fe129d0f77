"""Warmup: every composing model runs one real request while Triton loads it, so the first
client request does not pay for lazy allocations, and a version that cannot answer never
reports ready. An ensemble cannot warm up itself; its steps can.

The export writes one sample's tensors into each model version's ``warmup/`` folder (so the
manifest covers them, and a new version's sample never replaces an old one's), one file per
input in Triton's raw layout (each task decides its sample: for visual entailment the sample
request's encoded strings for ofa_preprocess, its model inputs for ofa_encoder_decoder, its
answer scores for ofa_postprocess). Each Python model runs that sample through its own code at
the end of ``initialize()`` (``warm_up``), before Triton marks it loaded.

Why not Triton's ``model_warmup``: when a ``model_warmup`` sample fails, Triton 2.51 crashes
with SIGSEGV in about one load in three (seen at server start and during a deploy, where it
takes down the server that still serves the old version). An exception from ``initialize()``
fails the load cleanly, with its message in the load error.
"""

from __future__ import annotations

import io
import json
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .limits import InputLimits

WARMUP_DIR = "warmup"
SAMPLE_SIZE = (640, 480)    # a typical photo: the decode and resize cost real requests pay
SAMPLE_SEED = 7


def serialize_strings(values: Sequence[bytes]) -> bytes:
    """TYPE_STRING elements as Triton's raw layout: each one a little-endian uint32 length,
    then its bytes (warmup files, perf_analyzer's b64 input data)."""
    return b"".join(struct.pack("<I", len(value)) + value for value in values)


def deserialize_strings(data: bytes) -> list[bytes]:
    """The inverse of ``serialize_strings``."""
    values, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        values.append(data[offset + 4:offset + 4 + length])
        offset += 4 + length
    return values


TRITON_DTYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64,
                 "TYPE_INT32": np.int32}


def read_warmup_sample(model_config: Mapping, version_dir: Path) -> dict[str, np.ndarray]:
    """The sample's inputs of one model version, as a batch of one: ``model_config`` is the
    model's config as Triton passes it to ``initialize()`` (parsed JSON)."""
    directory = Path(version_dir) / WARMUP_DIR
    sample = {}
    for tensor in model_config["input"]:
        name, path = tensor["name"], directory / tensor["name"]
        if not path.is_file():
            if tensor.get("optional"):
                continue
            raise FileNotFoundError(f"{path}: the warmup sample has no '{name}'; export the "
                                    "model again (ofa-triton export) to write it")
        shape = [1] + [int(d) for d in tensor["dims"]]
        if tensor["data_type"] == "TYPE_STRING":
            array = np.array(deserialize_strings(path.read_bytes()), dtype=np.object_)
        else:
            array = np.fromfile(path, dtype=TRITON_DTYPES[tensor["data_type"]])
        sample[name] = array.reshape(shape)
    return sample


class WarmupError(RuntimeError):
    """This version cannot answer its warmup sample: it is broken and must not serve."""


def warm_up(args: Mapping[str, str], compute: Callable[[dict[str, np.ndarray]], object]) -> float:
    """Run the model's warmup sample through ``compute`` (the model's own code) from
    ``initialize(args)``; returns the seconds it took. Any failure raises WarmupError, which
    fails the load with a message that says why."""
    config = json.loads(args["model_config"])
    started = time.perf_counter()
    try:
        version_dir = Path(args["model_repository"]) / args["model_version"]
        compute(read_warmup_sample(config, version_dir))
    except Exception as error:
        raise WarmupError(f"version {args['model_version']} of {config['name']} failed its "
                          f"warmup sample, so it is not loaded: {type(error).__name__}: "
                          f"{error}") from None
    return time.perf_counter() - started


def sample_image(limits: InputLimits = InputLimits()) -> bytes:
    """A photo-like image, the same at every export, made to fit the export's input limits
    (its format allowed, within the pixel and byte limits) so that warmup never trips over
    them."""
    from PIL import Image

    from .synthetic import photo_like

    image_format = next((f for f in ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
                         if f in limits.image_formats), None)
    if image_format is None:
        raise ValueError(f"no warmup sample can be written in the allowed formats "
                         f"{list(limits.image_formats)}; allow JPEG or PNG (--image-formats)")
    width, height = SAMPLE_SIZE
    while width * height > limits.max_image_pixels:
        width, height = max(1, width // 2), max(1, height // 2)
    while True:
        buffer = io.BytesIO()
        Image.fromarray(photo_like(width, height, SAMPLE_SEED)).save(buffer, image_format)
        if buffer.tell() <= limits.max_image_bytes:
            return buffer.getvalue()
        if width == height == 1:
            raise ValueError(f"--max-image-bytes {limits.max_image_bytes} refuses even a 1x1 "
                             f"{image_format} image; raise it")
        width, height = max(1, width // 2), max(1, height // 2)


def write_sample_files(repository: Path, version: int,
                       files: Mapping[str, Mapping[str, bytes]]) -> None:
    """{model name: {input name: raw bytes}} into each model version's warmup/ folder."""
    for model, contents in files.items():
        directory = Path(repository) / model / str(version) / WARMUP_DIR
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in contents.items():
            (directory / name).write_bytes(data)
