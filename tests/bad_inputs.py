"""A corpus of hostile, broken and awkward inputs, made by code (nothing binary in git).

``INVALID_IMAGES`` and ``INVALID_TEXTS`` (refused by the preprocessing step) and
``MALFORMED_REQUESTS`` (refused by Triton before any model runs) must each be refused with
INVALID_ARG and a message containing the fragment given; ``VALID_EDGE_IMAGES`` are unusual but
valid images that must be answered like any other. Each entry is a function so that a test
builds only what it uses.
"""

from __future__ import annotations

import functools
import io
import re
import struct
import zlib

import numpy as np
from PIL import Image

from ofa_triton.synthetic import photo_like


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def photo(width: int = 320, height: int = 240, seed: int = 1) -> Image.Image:
    return Image.fromarray(photo_like(width, height, seed))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


@functools.lru_cache(maxsize=None)
def png_declaring(width: int, height: int) -> bytes:
    """A complete, valid 1-bit greyscale PNG of ``width`` x ``height`` black pixels, compressed
    row by row so that it never exists decoded here: 20000x20000 (400 megapixels, 400 MB once
    Pillow decodes it at a byte per pixel) is 48 KB; 10000x10000 is 12 KB."""
    row = b"\x00" * (1 + (width + 7) // 8)          # filter byte 0, then packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
            + _png_chunk(b"IEND", b""))


# The accepted formats (InputLimits' default --image-formats), as Pillow names them, and how
# the corpus saves a photo in each.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
SAVE_OPTIONS = {"JPEG": {"quality": 90}, "WEBP": {"quality": 80}}


def encoded_photo(fmt: str, width: int = 320, height: int = 240, seed: int = 1) -> bytes:
    image = photo(width, height, seed)
    if fmt == "GIF":
        image = image.convert("P", palette=Image.ADAPTIVE)
    return _encoded(image, fmt, **SAVE_OPTIONS.get(fmt, {}))


def truncated(fmt: str, fraction: float = 2 / 3) -> bytes:
    """The first ``fraction`` of a 320x240 photo in ``fmt``: cut inside its pixel data. (A cut
    that removes only what follows the pixel data, such as PNG's IEND chunk or GIF's trailer
    byte, leaves a complete image, which Pillow decodes.)"""
    data = encoded_photo(fmt)
    return data[:int(len(data) * fraction)]


# What the refusal of a truncated file says, per format (Pillow 13). Only WebP's does not say
# "truncated": libwebp refuses a file shorter than its RIFF header declares before decoding.
TRUNCATION_ERRORS = {**{fmt: "OSError: image file is truncated" for fmt in FORMATS},
                     "WEBP": "OSError: could not create decoder object"}


def truncated_jpeg() -> bytes:
    return truncated("JPEG")


def truncated_png() -> bytes:
    return truncated("PNG")


def random_bytes() -> bytes:
    return np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()


def svg() -> bytes:
    return (b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
            b'width="64" height="64"><rect width="64" height="64" fill="red"/></svg>\n')


def pdf() -> bytes:
    return (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
            b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n"
            b"%%EOF\n")


def ico_image() -> bytes:
    """A format Pillow reads but the service does not accept (ICO)."""
    return _encoded(photo(32, 32), "ICO")


# The formats that hold several images, which the service reads as their first (as ModelScope's
# load_image does): GIF, WebP and PNG (APNG) animations, multi-page TIFF, and JPEG's
# multi-picture form MPO (stereo and depth photos; Pillow opens it as a JPEG, so the JPEG
# format accepts it). BMP holds one image only. Saved so that a frame alone decodes to
# exactly the same pixels as in the sequence: WebP lossless, JPEG at the same quality.
MULTI_FRAME_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF")
_SEQUENCE_FORMAT = {"JPEG": "MPO"}
_FRAME_OPTIONS = {"JPEG": {"quality": 90}, "WEBP": {"lossless": True},
                  "GIF": {"duration": 100, "loop": 0}, "PNG": {"duration": 100, "loop": 0}}


def _frame(fmt: str, index: int, first_seed: int = 1) -> Image.Image:
    # A new image per save: saving sets attributes on it (PNG's encoderconfig) that break a
    # later TIFF save of the same object.
    image = photo(96, 64, first_seed + index)
    return image.convert("P", palette=Image.ADAPTIVE) if fmt == "GIF" else image


def multi_frame(fmt: str, frames: int = 3, first_seed: int = 1) -> bytes:
    """``frames`` different photos (96x64; seeds ``first_seed`` on) in one file of ``fmt``."""
    images = [_frame(fmt, index, first_seed) for index in range(frames)]
    return _encoded(images[0], _SEQUENCE_FORMAT.get(fmt, fmt), save_all=True,
                    append_images=images[1:], **_FRAME_OPTIONS.get(fmt, {}))


def frame_alone(fmt: str, index: int = 0) -> bytes:
    """Frame ``index`` of ``multi_frame(fmt)`` saved on its own."""
    options = {k: v for k, v in _FRAME_OPTIONS.get(fmt, {}).items()
               if k not in ("duration", "loop")}
    return _encoded(_frame(fmt, index), fmt, **options)


def animated_gif() -> bytes:
    """Three frames of different images; the service answers with the first."""
    return multi_frame("GIF")


def first_frame_gif() -> bytes:
    """The first frame of ``animated_gif`` on its own."""
    return frame_alone("GIF")


def png_16bit() -> bytes:
    grey = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21 % 65536).astype(np.uint16)
    return _encoded(Image.fromarray(grey), "PNG")       # mode I;16


# name -> (bytes, a fragment the refusal's message must contain)
INVALID_IMAGES = {
    "zero_bytes": (lambda: b"", "empty (0 bytes)"),
    **{f"truncated_{fmt.lower()}": (functools.partial(truncated, fmt), TRUNCATION_ERRORS[fmt])
       for fmt in FORMATS},
    "random_bytes": (random_bytes, "not an image in an accepted format"),
    "text_file": (lambda: b"a photo of a dog on a beach\n", "it is text"),
    "svg": (svg, "XML document"),
    "pdf": (pdf, "PDF document"),
    "ico_not_accepted": (ico_image, "not an image in an accepted format"),
    "png_signature_only": (lambda: b"\x89PNG\r\n\x1a\n", "starts like a PNG file"),
    # Over this project's limit only (64 MP), over Pillow's warning threshold too (100 MP),
    # and over Pillow's own hard stop (400 MP): the same refusal, quoting the limit.
    "png_8000x8000": (lambda: png_declaring(8000, 8000), "8000x8000 = 64 megapixels"),
    "png_10000x10000": (lambda: png_declaring(10000, 10000), "10000x10000 = 100 megapixels"),
    "png_20000x20000": (lambda: png_declaring(20000, 20000), "declares 400 megapixels"),
}

# name -> bytes: valid, if unusual; answered like any image.
VALID_EDGE_IMAGES = {
    "png_16bit": png_16bit,
    "one_pixel": lambda: _encoded(photo(1, 1, 6), "PNG"),
    "wide_3000x3": lambda: _encoded(photo(3000, 3, 7), "PNG"),
    "tall_2x2000": lambda: _encoded(photo(2, 2000, 8), "JPEG", quality=90),
    "animated_gif": animated_gif,
    "animated_webp": functools.partial(multi_frame, "WEBP"),
    "animated_png": functools.partial(multi_frame, "PNG"),
    "multi_page_tiff": functools.partial(multi_frame, "TIFF"),
    "multi_picture_jpeg": functools.partial(multi_frame, "JPEG"),
}

MEGABYTES_OF_TEXT = "a dog " * 350_000            # 2.1 million characters

# name -> (hypothesis, premise, a fragment the refusal's message must contain); bytes are
# sent as they are, str as UTF-8.
INVALID_TEXTS = {
    "empty_hypothesis": (b"", None, "'hypothesis' is empty"),
    "whitespace_hypothesis": (b" \t\n ", b"a premise", "'hypothesis' is empty"),
    "megabytes_hypothesis": (MEGABYTES_OF_TEXT.encode(), None,
                             "'hypothesis' is 2,100,000 characters long"),
    "megabytes_premise": (b"a dog", MEGABYTES_OF_TEXT.encode(),
                          "'premise' is 2,100,000 characters long"),
    "invalid_utf8_hypothesis": (b"a \xff\xfe dog", None, "'hypothesis' is not valid UTF-8"),
    "invalid_utf8_premise": (b"a dog", b"\xc3\x28", "'premise' is not valid UTF-8"),
}


# Requests that break the ensemble's contract, each made from a valid image's bytes: refused
# by Triton itself, before any model runs (the messages are Triton's).
MALFORMED_REQUESTS = {
    "missing_hypothesis": (lambda image: {"image": bytes_tensor(image)},
                           "missing required input(s) ['hypothesis']"),
    "missing_image": (lambda image: {"hypothesis": bytes_tensor(b"a dog")},
                      "missing required input(s) ['image']"),
    "unknown_input": (lambda image: {"image": bytes_tensor(image),
                                     "hypothesis": bytes_tensor(b"a dog"),
                                     "colour": bytes_tensor(b"red")},
                      "unexpected inference input 'colour'"),
    "image_as_int32": (lambda image: {"image": np.zeros((1, 1), np.int32),
                                      "hypothesis": bytes_tensor(b"a dog")},
                       "'image' data-type is 'INT32', but model 'ofa_visual_entailment' "
                       "expects 'BYTES'"),
    "decoded_pixels_as_image": (lambda image: {"image": np.zeros((1, 64, 64, 3), np.uint8),
                                               "hypothesis": bytes_tensor(b"a dog")},
                                "'image' data-type is 'UINT8'"),
    "hypothesis_as_fp32": (lambda image: {"image": bytes_tensor(image),
                                          "hypothesis": np.zeros((1, 1), np.float32)},
                           "'hypothesis' data-type is 'FP32'"),
    "image_shape_1x2": (lambda image: {"image": bytes_tensor(image, image, shape=(1, 2)),
                                       "hypothesis": bytes_tensor(b"a dog")},
                        "unexpected shape for input 'image'"),
    "no_batch_dimension": (lambda image: {"image": bytes_tensor(image, shape=(1,)),
                                          "hypothesis": bytes_tensor(b"a dog", shape=(1,))},
                           "Expected [-1,1], got [1]"),
    "batch_sizes_differ": (lambda image: {"image": bytes_tensor(image, image),
                                          "hypothesis": bytes_tensor(b"a dog")},
                           "batch size does not match other inputs"),
    "batch_over_max_batch_size": (lambda image: {"image": bytes_tensor(*[image] * 33),
                                                 "hypothesis": bytes_tensor(*[b"a"] * 33)},
                                  "batch-size must be <= 32"),
}


# --- Sending them: raw tritonclient requests, and what a refusal must look like ----------------

PROTOCOLS = ("http", "grpc")
INVALID_ARG = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}
# Server-log lines that mean a Python stub died or was restarted; a machine without a GPU
# logs "Failed to initialize NVML" at startup, which is harmless.
STUB_TROUBLE = re.compile(r"Stub process|is not healthy|Failed to(?! initialize NVML)|[Rr]estart")


def bytes_tensor(*values: bytes, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A BYTES tensor, [rows, 1] unless ``shape`` says otherwise."""
    return np.array(values, dtype=np.object_).reshape(shape or (len(values), 1))


def infer(server, protocol: str, inputs: dict[str, np.ndarray]):
    """One raw request to the ensemble; the datatype follows each array's dtype."""
    from tritonclient import grpc, http
    from tritonclient.utils import np_to_triton_dtype

    from ofa_triton.triton_config import ENSEMBLE_MODEL

    module = http if protocol == "http" else grpc
    client = module.InferenceServerClient(server.http_url if protocol == "http"
                                          else server.grpc_url)
    tensors = []
    for name, array in inputs.items():
        datatype = "BYTES" if array.dtype == np.object_ else np_to_triton_dtype(array.dtype)
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return client.infer(ENSEMBLE_MODEL, tensors)


def refusal(server, protocol: str, inputs: dict[str, np.ndarray]) -> str:
    """Send a request that must be refused with INVALID_ARG; return the message."""
    from tritonclient.utils import InferenceServerException

    try:
        infer(server, protocol, inputs)
    except InferenceServerException as error:
        assert str(error.status()) == INVALID_ARG[protocol], (error.status(), error.message())
        return error.message()
    raise AssertionError("the request was answered, not refused")


def stub_trouble(log: str) -> list[str]:
    return [line for line in log.splitlines() if STUB_TROUBLE.search(line)]
