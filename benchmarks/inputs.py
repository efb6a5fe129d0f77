"""Realistic benchmark requests: photo-like JPEGs of typical sizes with natural texts.

Written two ways from the same requests:
- ``perf_analyzer_inputs.json`` for ``perf_analyzer --input-data``: BYTES elements as
  ``{"b64": ...}`` whose content already carries each element's 4-byte little-endian length
  prefix (perf_analyzer sends b64 content as-is);
- a list of dicts for the closed-loop load generator and the baselines.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from ofa_triton.synthetic import photo_like_jpegs
from ofa_triton.warmup import serialize_strings

TEXTS = [
    ("Two men are playing soccer on a green field.", "People are playing a sport."),
    ("A woman in a red coat walks her dog in the park.", "A dog is outside."),
    ("A child is eating ice cream on a sunny day.", "The child is sleeping."),
    ("A group of friends sit around a campfire at night.", None),
    ("An old man is reading a newspaper on a bench.", "A man is reading."),
    ("Cars are stuck in traffic on a busy highway.", "The road is empty."),
    ("A chef prepares food in a restaurant kitchen.", None),
    ("Two cats are sleeping on a sofa near the window.", "Animals are resting indoors."),
]


# Questions (VQA) and regions (grounding) of the same scenes.
QUESTIONS = ["What are the men playing?", "what color is the woman's coat", "What is the child "
             "eating?", "how many people are sitting around the fire?", "What is the old man "
             "reading?", "is the road busy", "where is the chef working?",
             "how many cats are on the sofa?"]
REGIONS = ["the man kicking the ball", "the woman in the red coat", "the child with ice cream",
           "the campfire in the middle", "the newspaper", "the red car on the left",
           "the chef's hands", "the cat near the window"]


def build_requests(count: int = 16, seed: int = 1000) -> list[dict]:
    """``count`` requests cycling through the sizes and texts; images differ per request.
    Each carries every task's texts: hypothesis and premise (entailment), question (VQA) and
    text (grounding)."""
    return [{"image": image, "hypothesis": TEXTS[index % len(TEXTS)][0],
             "premise": TEXTS[index % len(TEXTS)][1],
             "question": QUESTIONS[index % len(QUESTIONS)],
             "text": REGIONS[index % len(REGIONS)]}
            for index, image in enumerate(photo_like_jpegs(count, seed))]


def _length_prefixed_b64(value: bytes) -> dict:
    return {"b64": base64.b64encode(serialize_strings([value])).decode()}


def write_perf_analyzer_inputs(requests: list[dict], path: Path,
                               inputs: tuple[str, ...] = ("image", "hypothesis", "premise")
                               ) -> Path:
    """One perf_analyzer "data" entry per request, with the public model's ``inputs``
    (captioning: the image only). The premise is always sent (an empty one means
    hypothesis-only), because perf_analyzer needs the same inputs in every entry."""
    data = []
    for request in requests:
        values = {"image": request["image"], "hypothesis": request["hypothesis"].encode(),
                  "premise": (request["premise"] or "").encode(),
                  "question": request["question"].encode(), "text": request["text"].encode()}
        data.append({name: {"content": _length_prefixed_b64(values[name]), "shape": [1]}
                     for name in inputs})
    path.write_text(json.dumps({"data": data}))
    return path
