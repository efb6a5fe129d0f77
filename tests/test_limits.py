"""The input limits without a server: settings, checks, and the bad-input corpus against
``decode_image`` (the server side of the same corpus is test_bad_inputs.py)."""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from ofa_triton import limits as limits_module
from ofa_triton.cli import build_parser
from ofa_triton.image import ImageDecodeError, decode_image
from ofa_triton.limits import InputLimits, check_texts
from ofa_triton.triton_requests import RequestError
from ofa_triton.settings import ServingSettings
from tests import bad_inputs
from tests.bad_inputs import INVALID_IMAGES, VALID_EDGE_IMAGES, png_declaring


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    bad_inputs.photo(width, height).save(buffer, "PNG")
    return buffer.getvalue()


def test_defaults_and_normalized_formats():
    defaults = InputLimits()
    assert defaults.max_image_bytes == 20 * 2**20 and defaults.max_image_pixels == 50_000_000
    assert defaults.image_formats == ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
    assert defaults.max_text_chars == 4096
    assert InputLimits(image_formats="jpg, png,tif,PNG").image_formats == ("JPEG", "PNG", "TIFF")


@pytest.mark.parametrize("bad, message", [
    (dict(max_image_bytes=0), "max_image_bytes must be a positive integer"),
    (dict(max_text_chars=-1), "max_text_chars must be a positive integer"),
    (dict(max_image_pixels=10**9), "over Pillow's own hard limit"),
    (dict(image_formats="svg,jpeg"), "Pillow cannot open SVG"),
    (dict(image_formats=""), "at least one format"),
])
def test_invalid_limits_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        InputLimits(**bad)


def test_settings_carry_limits_and_old_files_get_the_defaults(tmp_path):
    from ofa_triton.tasks.visual_entailment import VisualEntailmentSettings

    task = VisualEntailmentSettings(patch_image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3,
                        max_src_length=80, prompt_type="prev_output", hypothesis_prompt="{}",
                        premise_prompt="{} {}", answers=("yes", "no", "maybe"))
    limits = InputLimits(max_image_bytes=1000, image_formats=("PNG",), max_text_chars=10)
    settings = ServingSettings(task, 0, 1, 2, (3, 4, 5), limits=limits)
    settings.write(tmp_path)
    assert ServingSettings.read(tmp_path) == settings
    old = settings.to_dict()
    del old["limits"]                       # an ofa_settings.json from before the limits
    del old["task"]                         # and before tasks: visual entailment's
    assert ServingSettings.from_dict(old) == dataclasses.replace(settings, limits=InputLimits())


def test_export_flags_build_the_limits():
    args = build_parser().parse_args(
        ["export", "--model", "m", "--repository", "r", "--max-image-bytes", "5000",
         "--max-image-pixels", "1000000", "--image-formats", "jpeg,png", "--max-text-chars", "64"])
    assert limits_module.from_export_arguments(args) == InputLimits(
        max_image_bytes=5000, max_image_pixels=1_000_000, image_formats=("JPEG", "PNG"),
        max_text_chars=64)
    defaults = build_parser().parse_args(["export", "--model", "m", "--repository", "r"])
    assert limits_module.from_export_arguments(defaults) == InputLimits()


@pytest.mark.parametrize("name", sorted(INVALID_IMAGES))
def test_invalid_images_are_refused_with_a_message_naming_the_problem(name):
    make, fragment = INVALID_IMAGES[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageDecodeError) as error:
            decode_image(make())
    assert fragment in str(error.value)
    assert not caught, [str(w.message) for w in caught]   # DecompressionBombWarning stays in


@pytest.mark.parametrize("name", sorted(VALID_EDGE_IMAGES))
def test_valid_edge_cases_decode(name):
    image = decode_image(VALID_EDGE_IMAGES[name]())
    assert image.mode == "RGB" and image.width * image.height >= 1


def test_the_pixel_limit_is_read_from_the_header_before_decoding(monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageDecodeError, match="10000x10000 = 100 megapixels"):
        decode_image(png_declaring(10000, 10000))


@pytest.mark.parametrize("pillow_max", [None, 10**12])
def test_the_pixel_limit_does_not_depend_on_pillows_global(monkeypatch, pillow_max):
    """With Pillow's own check off or far away, the per-request limit still applies."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_max)
    with pytest.raises(ImageDecodeError, match="20000x20000 = 400 megapixels"):
        decode_image(png_declaring(20000, 20000))
    with pytest.raises(ImageDecodeError, match=r"40x30 = 0.0012 megapixels, over the limit of "
                                               r"0.001 megapixels \(--max-image-pixels\)"):
        decode_image(_png(40, 30), InputLimits(max_image_pixels=1000))
    assert decode_image(_png(40, 25), InputLimits(max_image_pixels=1000)).size == (40, 25)


def test_pillows_warning_threshold_leaks_no_warning(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)     # Pillow warns over 1000 pixels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert decode_image(_png(40, 30)).size == (40, 30)
    assert not caught


def test_byte_and_format_limits():
    png = _png(20, 20)
    with pytest.raises(ImageDecodeError, match=rf"{len(png):,} bytes, over the limit of "
                                               r"100 bytes \(--max-image-bytes\)"):
        decode_image(png, InputLimits(max_image_bytes=100))
    with pytest.raises(ImageDecodeError, match="it is a PNG image, a format not accepted here"):
        decode_image(png, InputLimits(image_formats=("JPEG",)))
    assert decode_image(png, InputLimits(max_image_bytes=len(png))).size == (20, 20)


def test_truncated_images_never_load_partially(monkeypatch):
    """Pillow refuses truncated JPEG and PNG data as long as LOAD_TRUNCATED_IMAGES is off,
    and decode_image refuses to run at all if something turned it on."""
    for make in (bad_inputs.truncated_jpeg, bad_inputs.truncated_png):
        with pytest.raises(ImageDecodeError, match="image file is truncated"):
            decode_image(make())
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(_png(10, 10))


def test_an_animated_gif_gives_its_first_frame():
    animated = np.asarray(decode_image(bad_inputs.animated_gif()))
    assert np.array_equal(animated, np.asarray(decode_image(bad_inputs.first_frame_gif())))


@pytest.mark.parametrize("hypothesis, premise, fragment", [
    (h.decode(), p.decode() if p else p, f) for h, p, f in (
        bad_inputs.INVALID_TEXTS[name] for name in
        ("empty_hypothesis", "whitespace_hypothesis", "megabytes_hypothesis",
         "megabytes_premise"))])
def test_invalid_texts_are_refused(hypothesis, premise, fragment):
    with pytest.raises(RequestError) as error:
        check_texts(hypothesis, premise, InputLimits())
    assert fragment in str(error.value)


def test_text_limits_are_inclusive_and_an_empty_premise_is_fine():
    limits = InputLimits(max_text_chars=5)
    check_texts("a dog", "", limits)
    check_texts("é" * 5, "ab", limits)            # characters, not bytes
    with pytest.raises(RequestError, match="'premise' is 6 characters long, over the limit "
                                           r"of 5 characters \(--max-text-chars\)"):
        check_texts("a", "abcdef", limits)


def test_the_preprocessor_applies_the_settings_limits(tiny_checkpoint):
    from ofa_triton.export import load_checkpoint
    from ofa_triton.tasks.visual_entailment.preprocessing import VisualEntailmentPreprocessor

    settings = load_checkpoint(tiny_checkpoint).settings
    strict = dataclasses.replace(settings, limits=InputLimits(image_formats=("JPEG",),
                                                              max_text_chars=8))
    preprocessor = VisualEntailmentPreprocessor(strict, tiny_checkpoint / "vocab.json",
                                                tiny_checkpoint / "merges.txt")
    with pytest.raises(RequestError, match="'hypothesis' is 9 characters long"):
        preprocessor(_png(8, 8), "a big dog", None)
    with pytest.raises(RequestError, match="'hypothesis' is empty"):
        preprocessor(_png(8, 8), "  ", "premise")
    with pytest.raises(ImageDecodeError, match="a PNG image, a format not accepted"):
        preprocessor(_png(8, 8), "a dog", None)
