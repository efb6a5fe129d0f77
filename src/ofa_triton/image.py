"""Image side of OFA visual entailment, identical to ModelScope's.

ModelScope's ``load_image`` opens the file with Pillow, applies ``ImageOps.exif_transpose`` and
converts to RGB; the visual-entailment preprocessor then resizes to a square
``patch_image_size`` with BICUBIC (torchvision's Resize on a PIL image is Pillow's resize),
scales to [0, 1] and normalizes with the checkpoint's mean and std. This does the same with
Pillow and numpy, without torch, so the Triton preprocessing model stays light.

``decode_image`` is the one place request images are decoded; it applies the request limits
(``limits.InputLimits``: bytes, formats, pixels read from the header) before any pixel data.
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .limits import InputLimits
from .triton_requests import RequestError

# OFA's two normalizations: 0.5/0.5 unless the config sets imagenet_default_mean_and_std.
OFA_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class ImageDecodeError(RequestError):
    """The bytes are not an image this service accepts (a bad request: INVALID_ARG)."""


@dataclasses.dataclass(frozen=True)
class ImageTransform:
    size: int
    mean: tuple[float, float, float] = OFA_MEAN_STD[0]
    std: tuple[float, float, float] = OFA_MEAN_STD[1]

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> float32 [3, size, size], normalized."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        resized = rgb.resize((self.size, self.size), Image.BICUBIC)
        # torchvision's ToTensor divides uint8 by 255 in float32; Normalize then does
        # (x - mean) / std in float32. Same operations, same order.
        pixels = np.asarray(resized, dtype=np.float32) / np.float32(255)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def decode_image(data: bytes, limits: InputLimits = InputLimits()) -> Image.Image:
    """Encoded file bytes -> upright RGB PIL image, as ModelScope's load_image, within
    ``limits``. An animated or multi-page file (GIF, WebP, APNG, TIFF) gives its first frame,
    as ModelScope's load_image does: Pillow opens at frame 0 and nothing here seeks."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # With it on, Pillow silently fills in what a truncated file lacks.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on in this process, so "
                           "truncated images would be half-decoded; turn it off")
    if not data:
        raise ImageDecodeError("the image is empty (0 bytes)")
    if len(data) > limits.max_image_bytes:
        raise ImageDecodeError(f"the image is {len(data):,} bytes, over the limit of "
                               f"{limits.max_image_bytes:,} bytes (--max-image-bytes)")
    try:
        with warnings.catch_warnings():
            # The pixel check below is the limit that applies; Pillow's warning for images
            # over its global MAX_IMAGE_PIXELS would only leak into the server log. (The
            # filter is process-wide while it lasts; a preprocessing stub decodes serially.)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=limits.image_formats) as image:
                _check_pixels(image.size, limits)   # from the header: nothing decoded yet
                upright = ImageOps.exif_transpose(image)   # a loaded copy, never the lazy file
                return upright if upright.mode == "RGB" else upright.convert("RGB")
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:   # Pillow's hard stop, before our check
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        declared = _megapixels(int(pixels[1])) if pixels else "more pixels than Pillow allows"
        raise ImageDecodeError(f"the image declares {declared}, over the limit of "
                               f"{_megapixels(limits.max_image_pixels)} (--max-image-pixels)"
                               ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"could not decode the image: its {len(data):,} bytes are not "
                               f"an image in an accepted format "
                               f"({', '.join(limits.image_formats)}; --image-formats)"
                               f"{_looks_like(data, limits.image_formats)}") from None
    except Exception as error:  # Pillow raises many types for damaged or truncated data
        raise ImageDecodeError(f"could not decode the image ({len(data):,} bytes): "
                               f"{type(error).__name__}: {error}") from error


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.4g} megapixels"


def _check_pixels(size: tuple[int, int], limits: InputLimits) -> None:
    width, height = size
    if width * height > limits.max_image_pixels:
        raise ImageDecodeError(f"the image declares {width}x{height} = "
                               f"{_megapixels(width * height)}, over the limit of "
                               f"{_megapixels(limits.max_image_pixels)} (--max-image-pixels)")


# First bytes of files, to tell a client what it sent instead of an accepted image.
_IMAGE_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"),
                     (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
_OTHER_SIGNATURES = ((b"%pdf", "a PDF document"), (b"<svg", "an SVG drawing"),
                     (b"<?xml", "an XML document"), (b"<!doctype html", "an HTML page"),
                     (b"<html", "an HTML page"), (b"pk\x03\x04", "a ZIP archive"))
_TEXT_CONTROL_BYTES = set(range(32)) - set(b"\t\n\r")


def _looks_like(data: bytes, formats: tuple[str, ...]) -> str:
    """A hint for the error message: what the bytes seem to be."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        image_format = "WEBP"
    else:
        image_format = next((name for signature, name in _IMAGE_SIGNATURES
                             if data.startswith(signature)), None)
    if image_format in formats:
        return f"; it starts like a {image_format} file but is damaged or incomplete"
    if image_format:
        return f"; it is a {image_format} image, a format not accepted here"
    head = data[:256].lstrip().lower()
    other = next((name for signature, name in _OTHER_SIGNATURES if head.startswith(signature)),
                 None)
    if other:
        return f"; it is {other}"
    if not _TEXT_CONTROL_BYTES.intersection(data[:1024]):
        return "; it is text (send the image file's bytes, not its name or URL)"
    return ""
