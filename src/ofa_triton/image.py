"""Image side of OFA visual entailment, identical to ModelScope's.

ModelScope's ``load_image`` opens the file with Pillow, applies ``ImageOps.exif_transpose`` and
converts to RGB; the visual-entailment preprocessor then resizes to a square
``patch_image_size`` with BICUBIC (torchvision's Resize on a PIL image is Pillow's resize),
scales to [0, 1] and normalizes with the checkpoint's mean and std. This does the same with
Pillow and numpy, without torch, so the Triton preprocessing model stays light.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# OFA's two normalizations: 0.5/0.5 unless the config sets imagenet_default_mean_and_std.
OFA_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class ImageDecodeError(ValueError):
    """The bytes are not an image this service accepts."""


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


def decode_image(data: bytes) -> Image.Image:
    """Encoded file bytes -> upright RGB PIL image, as ModelScope's load_image."""
    if not data:
        raise ImageDecodeError("the image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            upright = ImageOps.exif_transpose(image)   # a loaded copy, never the lazy file
            return upright if upright.mode == "RGB" else upright.convert("RGB")
    except UnidentifiedImageError:
        raise ImageDecodeError(f"could not decode the image: its {len(data)} bytes are not an "
                               "image in a format Pillow reads (JPEG, PNG, WebP, GIF, BMP, "
                               "TIFF, ...)") from None
    except Exception as error:  # Pillow raises many types for damaged data
        raise ImageDecodeError(f"could not decode the image ({len(data)} bytes): "
                               f"{type(error).__name__}: {error}") from error


def load_image_file(path: str) -> Image.Image:
    with open(path, "rb") as handle:
        return decode_image(handle.read())
