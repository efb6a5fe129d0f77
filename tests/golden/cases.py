"""The fidelity corpus: images made by code, and texts that exercise ModelScope's text rules.

Shared by ``make_goldens.py`` (run in the ModelScope reference environment) and the tests (run
in the project environment). Everything is deterministic; the goldens record each image file's
sha256 so a test notices if an encoder library ever writes different bytes.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
from PIL import Image

from ofa_triton.synthetic import photo_like
from tests.bad_inputs import MULTI_FRAME_FORMATS, multi_frame


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    image: str                  # file name inside the images directory
    hypothesis: str
    premise: str | None         # None: hypothesis-only prompt (ModelScope: no text2)


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _exif_rotated_jpeg(width: int, height: int, seed: int, orientation: int) -> bytes:
    image = Image.fromarray(photo_like(width, height, seed))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(image, "JPEG", quality=90, exif=exif.tobytes())


def build_images() -> dict[str, bytes]:
    """file name -> encoded bytes: the still images, then the animated and multi-page ones."""
    return {**build_still_images(), **build_animated_images()}


def build_still_images() -> dict[str, bytes]:
    """file name -> encoded bytes of the 24 single-image files."""
    rgb = lambda w, h, s: Image.fromarray(photo_like(w, h, s))  # noqa: E731
    images = {
        "photo_640x480.jpg": _save(rgb(640, 480, 1), "JPEG", quality=88),
        "photo_1280x960.jpg": _save(rgb(1280, 960, 2), "JPEG", quality=85),
        "small_23x17.png": _save(rgb(23, 17, 3), "PNG"),
        "tall_40x300.png": _save(rgb(40, 300, 4), "PNG"),
        "wide_500x30.jpg": _save(rgb(500, 30, 5), "JPEG", quality=92),
        "tiny_1x1.png": _save(rgb(1, 1, 6), "PNG"),
        "square_64x64.bmp": _save(rgb(64, 64, 7), "BMP"),
        "photo_320x240.webp": _save(rgb(320, 240, 8), "WEBP", quality=80),
        "lossless_200x150.webp": _save(rgb(200, 150, 9), "WEBP", lossless=True),
        "palette_160x120.gif": _save(rgb(160, 120, 10).convert("P", palette=Image.ADAPTIVE), "GIF"),
        "palette_100x100.png": _save(rgb(100, 100, 11).convert("P", palette=Image.ADAPTIVE,
                                                               colors=16), "PNG"),
        "grey_120x90.png": _save(rgb(120, 90, 12).convert("L"), "PNG"),
        "grey_150x100.jpg": _save(rgb(150, 100, 13).convert("L"), "JPEG", quality=90),
        "grey_alpha_80x80.png": _save(rgb(80, 80, 14).convert("LA"), "PNG"),
        "rgba_200x100.png": _save(_with_alpha(rgb(200, 100, 15), 16), "PNG"),
        "cmyk_180x120.jpg": _save(rgb(180, 120, 17).convert("CMYK"), "JPEG", quality=90),
        "cmyk_90x60.tiff": _save(rgb(90, 60, 18).convert("CMYK"), "TIFF"),
        "bilevel_96x64.png": _save(rgb(96, 64, 19).convert("1"), "PNG"),
        "exif_rot90_300x200.jpg": _exif_rotated_jpeg(300, 200, 20, orientation=6),
        "exif_rot180_240x160.jpg": _exif_rotated_jpeg(240, 160, 21, orientation=3),
        "exif_rot270_200x320.jpg": _exif_rotated_jpeg(200, 320, 22, orientation=8),
        "exif_mirror_160x160.jpg": _exif_rotated_jpeg(160, 160, 23, orientation=2),
        "rgb_256x256.tiff": _save(rgb(256, 256, 24), "TIFF"),
        "progressive_400x300.jpg": _save(rgb(400, 300, 25), "JPEG", quality=75, progressive=True),
    }
    return images


# Each file's first photo seed: of the seeds tried (50 to 120, in steps of 10), the
# ones whose cases have ModelScope's two best answers at least 0.015 apart in every golden.
ANIMATED_FIRST_SEEDS = {"GIF": 80, "JPEG": 60, "PNG": 60, "TIFF": 100, "WEBP": 100}
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "TIFF": "tiff"}


def build_animated_images() -> dict[str, bytes]:
    """file name -> encoded bytes of a three-frame file (96x64, each frame another photo) in
    every format that holds several images: GIF, APNG, animated WebP, multi-page TIFF and
    JPEG's multi-picture MPO, each of other photos. ModelScope's load_image reads the first
    frame, and so must the service. Apart from the still images so that the still cases keep their images."""
    return {f"animated_{fmt.lower()}_96x64.{_EXTENSIONS[fmt]}":
            multi_frame(fmt, first_seed=ANIMATED_FIRST_SEEDS[fmt]) for fmt in MULTI_FRAME_FORMATS}


def still_image_names() -> list[str]:
    """The still images in the order the cases cycle through them."""
    return sorted(build_still_images())


def image_names() -> list[str]:
    """Every image: the still ones, then the animated ones (captioning's case order)."""
    return still_image_names() + sorted(build_animated_images())


def _with_alpha(image: Image.Image, seed: int) -> Image.Image:
    rng = np.random.Generator(np.random.PCG64(seed))
    alpha = rng.integers(0, 256, (image.height, image.width), dtype=np.uint8)
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


_LONG_TEXT = " ".join(f"word{i} and the {i}th thing" for i in range(40))  # 200 words

# Texts that exercise pre_caption and BPE: case, punctuation, hyphens, slashes, spaces, length,
# non-ASCII, OFA's <person> tag, tokens that the tokenizer treats specially.
HYPOTHESES = [
    "A man is riding a horse.",
    "Two dogs play in the SNOW!",
    "...the woman wears a red-and-white dress",
    "people/children are walking outside",
    "A cat   sleeps\ton the\n\ncouch",
    "#hashtag: a photo of ~things~",
    "A café in Zürich serves crème brûlée",
    "東京の街を歩く人々",
    "A dog 🐕 runs after a ball ⚽",
    "<person> is holding an umbrella",
    "the image shows <mask> on a table",
    "a <code_12> token and a <bin_7> token",
    "quotes \"inside\" and 'single' ones",
    _LONG_TEXT,
    "",
    "   ",
    "yes",
    "Maybe, maybe not; who knows?",
    "The sky is blue -- and there are no clouds / at all.",
    "UPPERCASE AND lowercase And MiXeD",
    "numbers 1, 22, 333 and 4.5%",
    "end with newline\n",
    "emoji only 😀😀😀",
    "tab\tseparated\twords",
    "it's the children's toy, isn't it?",
]

PREMISES = [
    None,
    "A person is outdoors.",
    "",
    "Two animals are in the snow - it is cold/windy",
    _LONG_TEXT,
    "Ünïcödé premise with àccents",
    None,
    "An Old Man Reads A Newspaper.",
]


STILL_CASE_COUNT = 56


def build_cases() -> list[Case]:
    """56 cases with every still image at least twice and every text at least twice, then one
    case per animated image (case56 on)."""
    image_names = still_image_names()
    cases = []
    for i in range(STILL_CASE_COUNT):
        hypothesis = HYPOTHESES[i % len(HYPOTHESES)]
        premise = PREMISES[(i * 3) % len(PREMISES)]
        image = image_names[(i * 5) % len(image_names)]
        cases.append(Case(name=f"case{i:02d}", image=image, hypothesis=hypothesis,
                          premise=premise))
    for k, image in enumerate(sorted(build_animated_images())):
        cases.append(Case(name=f"case{STILL_CASE_COUNT + k:02d}", image=image,
                          hypothesis=HYPOTHESES[k], premise=PREMISES[k + 1]))
    return cases


def animated_cases(cases: list) -> list:
    """The cases whose image is an animated or multi-page file."""
    animated = build_animated_images()
    return [case for case in cases if case.image in animated]


def write_images(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in build_images().items():
        path = directory / name
        path.write_bytes(data)
        paths[name] = path
    return paths


# Checkpoints the goldens cover: the default tiny one (the service's built-in model) and a
# variant that changes every setting the exporter must read rather than assume.
CHECKPOINTS = {
    "tiny": {},
    "variant": dict(
        seed=7, image_size=96, max_src_length=24, imagenet_mean_std=True,
        architecture_overrides=dict(
            d_model=128, encoder_layers=2, decoder_layers=3, encoder_attention_heads=2,
            decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=384,
            resnet_type="resnet18", token_bucket_size=64, image_bucket_size=12,
            scale_embedding=True, share_attn_bias=True, share_decoder_input_output_embed=False,
            attn_scale_factor=1.5, use_gamma_feature=True, gamma=0.8, normformer=False,
            activation_function="relu", max_position_embeddings=512)),
}

VARIANT_CASE_COUNT = 16


def cases_for(checkpoint: str) -> list[Case]:
    """The tiny checkpoint: every case; the variant: the first 16 and the animated ones."""
    cases = build_cases()
    if checkpoint == "tiny":
        return cases
    return cases[:VARIANT_CASE_COUNT] + animated_cases(cases)


# Published OFA sizes (OFA-Sys config.json files); their tensor names and shapes in ModelScope's
# OFAModel are recorded by make_goldens.py and compared with this project's module.
PUBLISHED_SIZES = {
    "tiny": dict(d_model=256, encoder_layers=4, decoder_layers=4, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024,
                 resnet_type="resnet50"),
    "medium": dict(d_model=512, encoder_layers=4, decoder_layers=4, encoder_attention_heads=8,
                   decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
                   resnet_type="resnet101"),
    "base": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                 decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                 resnet_type="resnet101"),
    "large": dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                  decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096,
                  resnet_type="resnet152"),
    "huge": dict(d_model=1280, encoder_layers=24, decoder_layers=12, encoder_attention_heads=16,
                 decoder_attention_heads=16, encoder_ffn_dim=5120, decoder_ffn_dim=5120,
                 resnet_type="resnet152"),
}
PUBLISHED_VOCAB_SIZE = 59457


# Image captioning: every image of the corpus is a case, on two generated checkpoints. The
# variant changes every setting the generation must read rather than assume: beam size, length
# limits, n-gram blocking, minimum length, length penalty, mean/std, image size, architecture.
CAPTION_CHECKPOINTS = {
    "caption_tiny": dict(task="image-captioning"),
    "caption_variant": dict(
        task="image-captioning", seed=11, image_size=96, imagenet_mean_std=True,
        beam_search=dict(beam_size=3, max_len_b=10, no_repeat_ngram_size=2, min_len=2,
                         len_penalty=0.6),
        architecture_overrides=dict(
            d_model=128, encoder_layers=2, decoder_layers=3, encoder_attention_heads=2,
            decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=384,
            resnet_type="resnet18", token_bucket_size=64, image_bucket_size=12,
            attn_scale_factor=1.5, activation_function="relu", max_position_embeddings=512)),
}


# Visual question answering and visual grounding: an image and a text per case (the question,
# or the referring expression). The texts exercise ModelScope's pre_question (VQA: lower case,
# leading ,.!?*#:;~ stripped, '-' and '/' to spaces, whitespace runs collapsed, truncated to
# max_src_length words, then '?' appended unless it ends with one; '<person>' kept) and
# pre_caption (grounding: the same, but '<person>' becomes 'person' and no '?'), then BPE
# truncation to max_src_length tokens.
@dataclasses.dataclass(frozen=True)
class TextCase:
    name: str
    image: str                  # file name inside the images directory
    text: str


VQA_QUESTIONS = [
    "What is the man riding?",
    "how many dogs are in the snow",
    "IS THE SKY BLUE?",
    "...what color is the woman's dress?",
    "  What   is\tthe cat\n\ndoing ?  ",
    "is it a red-and-white / black-and-white photo??",
    "Où est le café? Est-ce à Zürich",
    "東京の街には何がありますか？",
    "what is the dog 🐕 chasing",
    "what is <person> holding?",
    "is there a <bin_7> or a <code_12> here?",
    _LONG_TEXT,
    "",
    "?",
    "~#: are the children eating lunch",
    "What's on the table, isn't it food?",
    "numbers 1, 22, 333 or 4.5%?",
    "does the image describe the text ? yes no maybe\n",
]

GROUNDING_TEXTS = [
    "the man riding a bicycle",
    "Two DOGS playing in the snow.",
    "...the woman in a red-and-white dress",
    "people/children walking outside",
    "a cat   sleeping\ton the\n\ncouch",
    "<person> holding an umbrella",
    "the café in Zürich with crème brûlée",
    "東京の街を歩く人々",
    "the dog 🐕 with a ball ⚽",
    "the <bin_7> token next to <code_12>",
    'quotes "inside" the text',
    _LONG_TEXT,
    "",
    "   ",
    "LEFT",
    "#hashtag: the tree next to the car",
    "the old man reading a newspaper on a bench in the park, left side",
    "end with newline\n",
]

TEXT_CASE_COUNT = 36
ANIMATED_TEXT_OFFSET = 5


def text_cases(texts: list[str], count: int = TEXT_CASE_COUNT) -> list[TextCase]:
    """``count`` cases: still image i*5 mod 24 and text i mod len(texts), so every still image
    and every text comes at least once, and (with 18 texts and 36 cases) some images with two
    texts and every text with two images; then one case per animated image."""
    image_names = still_image_names()
    cases = [TextCase(name=f"case{i:02d}", image=image_names[(i * 5) % len(image_names)],
                      text=texts[i % len(texts)]) for i in range(count)]
    for k, image in enumerate(sorted(build_animated_images())):
        # Texts from the sixth on: the first five gave near-ties between the best beams.
        text = texts[(k + ANIMATED_TEXT_OFFSET) % len(texts)]
        cases.append(TextCase(name=f"case{count + k:02d}", image=image, text=text))
    return cases


def vqa_cases() -> list[TextCase]:
    return text_cases(VQA_QUESTIONS)


def grounding_cases() -> list[TextCase]:
    return text_cases(GROUNDING_TEXTS)


# Answers of the constrained VQA checkpoints: words of the tiny vocabulary, one BPE token
# (' yes', ' two') or several (' two dogs', ' snow' + 'man', ' umbrella' + 's'), with shared
# prefixes so the constraint trie branches after the first token.
VQA_ANSWERS = ["yes", "no", "two", "two dogs", "two men", "red", "red dress", "a dog", "a cat",
               "the man", "blue", "blue shirts", "snow", "snowman", "umbrellas", "green grass"]

_VARIANT_ARCHITECTURE = dict(
    d_model=128, encoder_layers=2, decoder_layers=3, encoder_attention_heads=2,
    decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=384,
    resnet_type="resnet18", token_bucket_size=64, image_bucket_size=12,
    attn_scale_factor=1.5, activation_function="relu", max_position_embeddings=512)

# VQA: free generation (no answer list; the released pretrain checkpoints' setting), generation
# constrained to an answer list by a trie, and traverse (every answer scored). prompt_type,
# image size, mean/std, text length, beam settings and architecture vary between them. The
# seeds are the ones (of a few tried) whose answers vary most across the cases with the best
# and second beams (answer scores for traverse) furthest apart.
VQA_CHECKPOINTS = {
    "vqa_free": dict(task="visual-question-answering", seed=1),
    "vqa_trie": dict(
        task="visual-question-answering", seed=1, image_size=96, imagenet_mean_std=True,
        max_src_length=24, prompt_type="src", answers=VQA_ANSWERS,
        beam_search=dict(beam_size=6, max_len_b=5, no_repeat_ngram_size=0, len_penalty=0.6),
        architecture_overrides=_VARIANT_ARCHITECTURE),
    "vqa_traverse": dict(
        task="visual-question-answering", seed=3, image_size=80, prompt_type="prev_output",
        gen_type="traverse", answers=VQA_ANSWERS),
}

# Grounding: the released settings at a 256 px patch (max_image_size 256), and a variant at
# 128 px whose max_image_size (512) differs from the patch size, with another beam. Seeds
# chosen as for VQA (boxes that vary most, beams furthest apart).
GROUNDING_CHECKPOINTS = {
    "grounding_tiny": dict(task="visual-grounding", seed=3, image_size=256, max_image_size=256),
    "grounding_variant": dict(
        task="visual-grounding", seed=1, image_size=128, max_image_size=512,
        imagenet_mean_std=True, max_src_length=16,
        beam_search=dict(beam_size=3, no_repeat_ngram_size=0),
        architecture_overrides=_VARIANT_ARCHITECTURE),
}
