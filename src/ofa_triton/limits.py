"""What the service accepts from the network: limits on the image and the texts of a request.

Set at export (``ofa-triton export --max-image-bytes ... --max-image-pixels ...
--image-formats ... --max-text-chars ...``), written into ofa_settings.json with the other
serving settings, and applied per request by the preprocessing model: the image limits in
``image.decode_image`` (the one place images are decoded), the text limits in ``check_texts``
below. Every refusal is an INVALID_ARG error whose message names the problem and the limit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .triton_requests import RequestError

# Defaults for a public endpoint. The model sees a patch_image_size square (480 px for the
# released checkpoints) and at most max_src_length (80) words, so the limits only have to let
# every real photo and sentence through while bounding what one request can cost:
# - 20 MiB of encoded image: a full-quality JPEG of a 50 MP camera is 15-25 MB; more is not a
#   photo anyone needs to send to a 480 px model. Triton 2.51 itself bounds no request size
#   (a 100 MiB hypothesis reaches the model over HTTP and gRPC alike; README.md, "The
#   service"), so this check is what refuses a larger image; cap request bodies in front of
#   a public endpoint.
DEFAULT_MAX_IMAGE_BYTES = 20 * 2**20
# - 50 megapixels: covers full-resolution 48/50 MP phone photos (8160x6120) and 45 MP
#   full-frame cameras; decoded as RGB that is 150 MB per request in a preprocessing
#   instance, and stays under Pillow's own warning threshold (89 MP).
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
# - The formats of the public contract (and of the fidelity goldens). Every other Pillow
#   decoder (PSD, EPS via Ghostscript, ICO, PCX, TGA, FITS, ...) is attack surface that no
#   client needs.
DEFAULT_IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# - 4096 characters of hypothesis (and of premise): OFA keeps the first 80 words anyway, and
#   an SNLI-VE sentence is about 10; the cap keeps byte-level BPE, which is slow on one very
#   long "word", from running on megabytes.
DEFAULT_MAX_TEXT_CHARS = 4096

# Pillow stops any image over twice its MAX_IMAGE_PIXELS (178,956,970 px with its default)
# with DecompressionBombError before this project's check can run; a higher limit here could
# not take effect, so it is refused at export rather than silently lowered.
PILLOW_HARD_PIXEL_LIMIT = 2 * (1024 * 1024 * 1024 // 4 // 3)

# Common spellings that are not Pillow format names.
_FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}


def pillow_formats() -> set[str]:
    """The format names Pillow can open in this environment."""
    from PIL import Image

    Image.init()
    return set(Image.OPEN)


@dataclasses.dataclass(frozen=True)
class InputLimits:
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    image_formats: tuple[str, ...] = DEFAULT_IMAGE_FORMATS
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS

    def __post_init__(self):
        for name in ("max_image_bytes", "max_image_pixels", "max_text_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if self.max_image_pixels > PILLOW_HARD_PIXEL_LIMIT:
            raise ValueError(f"max_image_pixels {self.max_image_pixels} is over Pillow's own "
                             f"hard limit of {PILLOW_HARD_PIXEL_LIMIT} pixels, which would "
                             "refuse such images first")
        formats = self.image_formats
        if isinstance(formats, str):
            formats = formats.split(",")
        formats = tuple(dict.fromkeys(_FORMAT_ALIASES.get(f.strip().upper(), f.strip().upper())
                                      for f in formats if f.strip()))
        if not formats:
            raise ValueError("image_formats must name at least one format")
        # (The defaults need no check, and the models that never decode images do not
        # import Pillow's plugins for nothing.)
        unknown = [] if formats == DEFAULT_IMAGE_FORMATS else sorted(set(formats) - pillow_formats())
        if unknown:
            raise ValueError(f"image_formats: Pillow cannot open {', '.join(unknown)} (it knows "
                             f"{', '.join(sorted(pillow_formats()))})")
        object.__setattr__(self, "image_formats", formats)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "image_formats": list(self.image_formats)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "InputLimits":
        """``None`` (a settings file written before limits existed): the defaults."""
        if data is None:
            return cls()
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "image_formats" else v)
                      for k, v in data.items() if k in fields})


def _check_length(text: str, name: str, limits: InputLimits) -> None:
    if len(text) > limits.max_text_chars:
        raise RequestError(f"'{name}' is {len(text):,} characters long, over the limit of "
                           f"{limits.max_text_chars:,} characters (--max-text-chars)")


def check_text(text: str, name: str, limits: InputLimits, what: str) -> None:
    """Refuse a required text over the length limit, or empty or only whitespace (ModelScope
    would answer it, about nothing); ``what`` says what the text should be."""
    _check_length(text, name, limits)
    if not text.strip():
        raise RequestError(f"'{name}' is empty (or only whitespace); send {what}")


def check_texts(hypothesis: str, premise: str | None, limits: InputLimits) -> None:
    """Visual entailment's texts. An empty premise is fine: it means the hypothesis-only
    prompt."""
    if premise is not None:
        _check_length(premise, "premise", limits)
    check_text(hypothesis, "hypothesis", limits, "the sentence to check against the image")


def add_export_arguments(parser) -> None:
    """``ofa-triton export``'s flags for the limits (the names the refusals quote)."""
    group = parser.add_argument_group(
        "input limits", "what one request may carry (refused with INVALID_ARG beyond them)")
    group.add_argument("--max-image-bytes", type=int, default=DEFAULT_MAX_IMAGE_BYTES,
                       help="largest encoded image, in bytes (default: %(default)s = 20 MiB)")
    group.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                       help="largest width x height, read from the image header before "
                       "decoding (default: %(default)s)")
    group.add_argument("--image-formats", default=",".join(DEFAULT_IMAGE_FORMATS),
                       help="comma-separated Pillow formats accepted (default: %(default)s)")
    group.add_argument("--max-text-chars", type=int, default=DEFAULT_MAX_TEXT_CHARS,
                       help="longest hypothesis and premise, in characters "
                       "(default: %(default)s)")


def from_export_arguments(args) -> InputLimits:
    return InputLimits(max_image_bytes=args.max_image_bytes,
                       max_image_pixels=args.max_image_pixels,
                       image_formats=args.image_formats, max_text_chars=args.max_text_chars)
