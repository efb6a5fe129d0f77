"""``--precision int8``: the CPU graph with its convolutions in int8, calibrated on images.

Why the convolutions and nothing else: the ResNet is about three quarters of a sample's FLOPs
(8.6 of 11.8 GFLOP for OFA-tiny at 256 px), and onnxruntime already runs the fp32 graph at
about 88% of this machine's measured GEMM rate, so at fp32 nothing is left to win. Measured on
that model (2 cores with AVX512-VNNI, batch 4, 16 held-out images): fp32 67 ms per sample;
int8 convolutions 37 ms (1.8x), median |difference| 0.012 in log-probability, every answer the
same; int8 convolutions and matmuls 28 ms (2.3x), but three times the error and one answer of
16 flipped. Hence the convolutions only.

How: onnxruntime's static quantization in QDQ form, int8 weights per output channel and uint8
activations per tensor (the u8s8 kernels of AVX2/AVX512-VNNI), activation ranges from MinMax
calibration. The calibration inputs go through the serving preprocessor, so they are what the
graph will see. Images of the deployment's own kind calibrate best (``--calibration-images``);
without them, generated photo-like images are used and the export record says so.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .image import ImageDecodeError, decode_image
from .tasks.visual_entailment.preprocessing import VisualEntailmentPreprocessor, stack
from .runtime import trim_padding
from .synthetic import photo_like_jpegs

QUANTIZED_OPS = ("Conv",)
GENERATED_CALIBRATION_IMAGES = 16
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Texts only shape the token inputs; the convolutions see the image alone.
CALIBRATION_TEXTS = (("Two people are walking a dog in the park.", None),
                     ("A man is cooking dinner.", "A person is in a kitchen with a stove."),
                     ("The street is empty.", "Cars wait at a red light on a busy street."))


def calibration_images(directory: Path | None) -> tuple[list[bytes], str]:
    """The calibration images' bytes and a description of where they came from."""
    if directory is None:
        return (photo_like_jpegs(GENERATED_CALIBRATION_IMAGES, seed=5000),
                f"{GENERATED_CALIBRATION_IMAGES} generated photo-like images")
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"--calibration-images {directory}: not a directory")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"--calibration-images {directory}: no image files in it (looked for "
                         f"{', '.join(IMAGE_SUFFIXES)}); put a few dozen typical request "
                         "images there")
    images = [p.read_bytes() for p in files]
    for path, data in zip(files, images):   # name the file that is not an image, up front
        try:
            decode_image(data)
        except ImageDecodeError as error:
            raise ValueError(f"--calibration-images: {path}: {error}") from None
    return images, f"{len(files)} images from {directory}"


def graph_inputs(preprocessor: VisualEntailmentPreprocessor, images: Sequence[bytes],
                 batch_size: int = 1) -> list[dict[str, np.ndarray]]:
    """The images in batches of ``batch_size``, as the encoder-decoder model gets them
    (preprocessed with ragged texts, stacked, trimmed of the batch's padding)."""
    pad = preprocessor.settings.pad_token_id
    tensors = []
    for index, data in enumerate(images):
        hypothesis, premise = CALIBRATION_TEXTS[index % len(CALIBRATION_TEXTS)]
        try:
            tensors.append(preprocessor.tensors(data, hypothesis, premise))
        except ValueError as error:
            raise ValueError(f"calibration image {index + 1}: {error}") from None
    return [trim_padding(stack(tensors[start:start + batch_size]), pad)
            for start in range(0, len(tensors), batch_size)]


def quantize_convolutions(fp32_graph: Path, int8_graph: Path,
                          calibration: Sequence[dict[str, np.ndarray]],
                          progress: Callable[[str], None] = print) -> dict:
    """Write ``int8_graph``: ``fp32_graph`` with its convolutions quantized (QDQ), and return
    what the export record keeps of it."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                          QuantFormat, QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.remaining = iter(calibration)

        def get_next(self):
            return next(self.remaining, None)

    with tempfile.TemporaryDirectory(prefix="ofa-int8-") as scratch:
        # Shape inference and onnxruntime's graph optimizations first (folded batch norms,
        # known shapes), as onnxruntime's quantization guide asks.
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_graph), str(prepared), skip_symbolic_shape=True)
        progress(f"      calibrating the {', '.join(QUANTIZED_OPS)} activations on "
                 f"{len(calibration)} images")
        quantize_static(str(prepared), str(int8_graph), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    return {"ops": list(QUANTIZED_OPS), "format": "QDQ", "weights": "int8 per channel",
            "activations": "uint8 per tensor", "calibration_method": "MinMax",
            "calibration_images": len(calibration)}
