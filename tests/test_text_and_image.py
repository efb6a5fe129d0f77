"""Unit tests of the text and image rules (their equality with ModelScope is in
test_fidelity.py; these pin the rules themselves, readable without goldens)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ofa_triton import text
from ofa_triton.tasks import preprocessing
from ofa_triton.image import ImageDecodeError, ImageTransform, decode_image
from ofa_triton.tasks.visual_entailment.preprocessing import VisualEntailmentPreprocessor
from ofa_triton.tasks.visual_entailment.prompts import build_prompt
from ofa_triton.text import OfaTextEncoder, pre_caption
from tests import bad_inputs


@pytest.mark.parametrize("raw, cleaned", [
    ("A Dog.", "a dog."),
    ("...!?leading punctuation", "leading punctuation"),
    ("red-and-white/blue", "red and white blue"),
    ("<person> waves", "person waves"),
    ("many    spaces\t\tand tabs", "many spaces and tabs"),
    ("single\ttab stays", "single\ttab stays"),       # only runs of 2+ whitespace collapse
    ("  padded  ", "padded"),
    ("trailing newline\n", "trailing newline"),
    ("", ""),
])
def test_pre_caption(raw, cleaned):
    assert pre_caption(raw) == cleaned


def test_pre_caption_truncates_words():
    assert pre_caption("one two three four", max_words=2) == "one two"


def test_prompts():
    assert build_prompt("A Cat", None, 80) == ' does the image describe " a cat "?'
    assert build_prompt("A Cat", "An Animal", 80) == \
        ' can image and text1 " an animal " imply text2 " a cat "?'


@pytest.fixture(scope="module")
def encoder(tiny_checkpoint):
    return OfaTextEncoder(tiny_checkpoint / "vocab.json", tiny_checkpoint / "merges.txt",
                          max_src_length=80, prompt_type="prev_output")


def test_source_has_bos_and_eos_and_is_truncated_by_tokens(tiny_checkpoint):
    short = OfaTextEncoder(tiny_checkpoint / "vocab.json", tiny_checkpoint / "merges.txt",
                           max_src_length=5, prompt_type="prev_output")
    ids = short.source_ids(build_prompt("a b c d e f g h", None, 5))
    assert len(ids) == 5 + 2 and ids[0] == short.bos_id and ids[-1] == short.eos_id


def test_decoder_prompts(tiny_checkpoint, encoder):
    source = encoder.source_ids(build_prompt("a dog", None, 80))
    assert encoder.decoder_prompt_ids(source) == source[:-1]
    none = OfaTextEncoder(tiny_checkpoint / "vocab.json", tiny_checkpoint / "merges.txt",
                          max_src_length=80, prompt_type="none")
    assert none.decoder_prompt_ids(source) == [none.bos_id]
    src = OfaTextEncoder(tiny_checkpoint / "vocab.json", tiny_checkpoint / "merges.txt",
                         max_src_length=80, prompt_type="src")      # VQA's third form
    assert src.decoder_prompt_ids(source) == source
    with pytest.raises(ValueError, match="prompt_type"):
        OfaTextEncoder(tiny_checkpoint / "vocab.json", tiny_checkpoint / "merges.txt",
                       max_src_length=80, prompt_type="prefix")


def test_added_tokens_and_answers(encoder):
    assert encoder.vocab_size == len(encoder.tokenizer.get_vocab())
    code = encoder.tokenizer.token_to_id("<code_0>")
    assert encoder.tokenizer.token_to_id("<bin_999>") == code + 8192 + 999
    assert len(encoder.answer_token_ids(["yes", "no", "maybe"])) == 3
    with pytest.raises(ValueError, match="single-token answers"):
        encoder.answer_token_ids(["perhaps"])


def test_the_tokenizer_is_built_once_per_preprocessor(exported_repositories, monkeypatch):
    preprocessor = VisualEntailmentPreprocessor.from_directory(
        exported_repositories["tiny"] / "ofa_preprocess" / "1")
    built = []
    monkeypatch.setattr(text, "build_bpe_tokenizer", lambda *a: built.append(a))
    for _ in range(3):
        preprocessor.text_inputs("a dog", "an animal")
    assert built == []
    assert preprocessing.OfaTextEncoder is text.OfaTextEncoder


def test_empty_premise_means_hypothesis_only(exported_repositories):
    preprocessor = VisualEntailmentPreprocessor.from_directory(
        exported_repositories["tiny"] / "ofa_preprocess" / "1")
    for a, b in zip(preprocessor.text_inputs("a dog", ""), preprocessor.text_inputs("a dog", None)):
        assert np.array_equal(a, b)


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_transform_shape_dtype_and_range():
    image = Image.new("RGB", (30, 20), (255, 0, 128))
    pixels = ImageTransform(32)(image)
    assert pixels.shape == (3, 32, 32) and pixels.dtype == np.float32
    assert pixels[0].max() == 1.0 and pixels[1].min() == -1.0


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = _encoded(Image.new("RGB", (40, 10)), "JPEG", exif=exif.tobytes())
    assert decode_image(data).size == (10, 40)


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n"])
def test_undecodable_bytes_raise_a_clear_error(data):
    with pytest.raises(ImageDecodeError, match="could not decode the image|0 bytes"):
        decode_image(data)


# --- Multi-frame and truncated files, in every accepted format ----------------------------

@pytest.fixture(scope="module")
def tiny_preprocessor(exported_repositories):
    return VisualEntailmentPreprocessor.from_directory(
        exported_repositories["tiny"] / "ofa_preprocess" / "1")


@pytest.mark.parametrize("fmt", bad_inputs.MULTI_FRAME_FORMATS)
def test_a_multi_frame_file_is_read_as_its_first_frame(tiny_preprocessor, fmt):
    """Animated GIF, WebP and PNG (APNG), multi-page TIFF and multi-picture JPEG (MPO): the
    model gets exactly the pixels of the first frame saved alone, and not those of the others
    (which differ). BMP cannot hold more than one image."""
    data = bad_inputs.multi_frame(fmt)
    with Image.open(io.BytesIO(data)) as image:
        assert image.n_frames == 3 and image.format == ("MPO" if fmt == "JPEG" else fmt)

    def pixels(image_bytes: bytes) -> np.ndarray:
        return tiny_preprocessor(image_bytes, "a photo", None).patch_images

    used = pixels(data)
    assert np.array_equal(used, pixels(bad_inputs.frame_alone(fmt, 0)))
    for index in (1, 2):
        assert not np.allclose(used, pixels(bad_inputs.frame_alone(fmt, index)), atol=0.05)


@pytest.mark.parametrize("fraction", [1 / 3, 2 / 3, 0.99], ids=["third", "two_thirds", "99pc"])
@pytest.mark.parametrize("fmt", bad_inputs.FORMATS)
def test_a_truncated_file_is_refused_in_every_format(tiny_preprocessor, fmt, fraction):
    """Cut inside its pixel data, a file of any accepted format is refused, never decoded in
    part; the message says what Pillow found (tests/bad_inputs.py, TRUNCATION_ERRORS)."""
    data = bad_inputs.truncated(fmt, fraction)
    with pytest.raises(ImageDecodeError, match=rf"^could not decode the image \({len(data):,} "
                                               rf"bytes\): {bad_inputs.TRUNCATION_ERRORS[fmt]}"):
        tiny_preprocessor(data, "a photo", None)


def test_a_truncated_compressed_tiff_is_refused():
    """libtiff writes a compressed TIFF's directory after its pixel data, so a cut file has no
    directory left: Pillow cannot even identify it. (Pillow also warns "Corrupt EXIF data"
    while trying.)"""
    data = _encoded(bad_inputs.photo(), "TIFF", compression="tiff_lzw")
    for fraction in (1 / 3, 2 / 3, 0.99):
        cut = data[:int(len(data) * fraction)]
        with pytest.warns(UserWarning, match="Corrupt EXIF data"), \
                pytest.raises(ImageDecodeError, match=rf"^could not decode the image: its "
                              rf"{len(cut):,} bytes are not an image .*; it starts like a TIFF "
                              rf"file but is damaged or incomplete$"):
            decode_image(cut)
