"""Photo-like synthetic images (no network, no dataset): smooth gradients, a few shapes and
sensor-like noise, so JPEG sizes and decode costs are those of real photos. Used by the
fidelity corpus, the benchmarks and the example image; deterministic per seed."""

from __future__ import annotations

import io

import numpy as np

# Typical request photo sizes: VGA and 1.2 megapixels.
TYPICAL_SIZES = ((640, 480), (1280, 960))


def photo_like(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth gradients, a few shapes and sensor-like noise: JPEG-friendly, not flat."""
    rng = np.random.Generator(np.random.PCG64(seed))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([
        128 + 100 * np.sin(x / max(width, 1) * np.pi * rng.uniform(0.5, 3) + rng.uniform(0, 6)),
        128 + 100 * np.cos(y / max(height, 1) * np.pi * rng.uniform(0.5, 3) + rng.uniform(0, 6)),
        128 + 90 * np.sin((x + y) / max(width + height, 1) * np.pi * rng.uniform(1, 4)),
    ], axis=-1)
    for _ in range(4):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.1, 0.4) * min(width, height) + 1
        inside = (x - cx) ** 2 + (y - cy) ** 2 < radius ** 2
        base[inside] = rng.uniform(0, 255, 3)
    base += rng.normal(0, 6, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def photo_like_jpegs(count: int, seed: int, quality: int = 85) -> list[bytes]:
    """``count`` JPEG files cycling through TYPICAL_SIZES, a different image each (seed,
    seed + 1, ...): the benchmark's requests and int8's default calibration images."""
    from PIL import Image

    images = []
    for index in range(count):
        width, height = TYPICAL_SIZES[index % len(TYPICAL_SIZES)]
        buffer = io.BytesIO()
        Image.fromarray(photo_like(width, height, seed + index)).save(buffer, "JPEG",
                                                                      quality=quality)
        images.append(buffer.getvalue())
    return images
