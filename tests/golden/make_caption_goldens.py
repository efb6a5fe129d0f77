"""Regenerate the image-captioning goldens with ModelScope's own pipeline.

Run it in the reference environment, from the repository root:

    .venv-ref/bin/python tests/golden/make_caption_goldens.py

It writes each captioning checkpoint of ``cases.CAPTION_CHECKPOINTS`` with this project's
generator and asks ``modelscope.pipelines.pipeline(Tasks.image_captioning, model=<dir>)`` to
caption every image of the corpus. Recorded per case: ModelScope's caption (the exact string
the service must return), the source token ids of its preprocessor, and every finished
hypothesis of its beam search (tokens and normalized score, best first), observed on the
pipeline's own SequenceGenerator, not recomputed.

ModelScope's captioning pipeline imports ``open_clip`` when it loads, which OFA never calls: an
empty stand-in module lets it load without that package.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from ofa_triton.tiny_checkpoint import generate_tiny_checkpoint  # noqa: E402
from tests.golden.cases import CAPTION_CHECKPOINTS, write_images  # noqa: E402
from tests.golden.make_goldens import reference_versions  # noqa: E402

GOLDEN_DIR = Path(__file__).resolve().parent


def golden_path(checkpoint: str) -> Path:
    return GOLDEN_DIR / f"{checkpoint}_image_captioning.json"


class _GenerationRecorder:
    """Wraps the pipeline's SequenceGenerator.generate: records each request's finished
    hypotheses and passes them on unchanged."""

    def __init__(self, generator):
        self._generate = generator.generate
        self.last = None
        generator.generate = self

    def __call__(self, *args, **kwargs):
        out = self._generate(*args, **kwargs)
        self.last = [[{"tokens": [int(t) for t in hypothesis["tokens"]],
                       "score": float(hypothesis["score"])} for hypothesis in sentence]
                     for sentence in out]
        return out


def record_checkpoint(name: str, work: Path) -> None:
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    checkpoint = generate_tiny_checkpoint(work / name, **CAPTION_CHECKPOINTS[name])
    images = write_images(work / "images")
    pipe = pipeline(Tasks.image_captioning, model=str(checkpoint))
    _, info = type(pipe.model.model).from_pretrained(str(checkpoint), output_loading_info=True)
    if any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        raise SystemExit(f"ModelScope did not load {name} cleanly: {info}")
    recorder = _GenerationRecorder(pipe.model.generator)
    records = []
    for index, (image, path) in enumerate(sorted(images.items())):
        sample = pipe.preprocessor({"image": str(path)})
        result = pipe(str(path))
        [caption] = result["caption"]
        [hypotheses] = recorder.last
        records.append({
            "name": f"case{index:02d}",
            "image": image,
            "image_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "source_ids": sample["net_input"]["input_ids"][0].tolist(),
            "caption": caption,
            "hypotheses": hypotheses,
        })
        print(f"{name} {image}: {caption!r}", flush=True)
    path = golden_path(name)
    path.write_text(json.dumps({
        "generator": json.loads((checkpoint / "GENERATED.json").read_text()),
        "generator_arguments": CAPTION_CHECKPOINTS[name],
        "checkpoint_settings": json.loads((checkpoint / "configuration.json").read_text())["model"],
        "reference_versions": reference_versions(),
        "cases": records,
    }, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path} ({len(records)} cases)")


def main() -> None:
    sys.modules.setdefault("open_clip", types.ModuleType("open_clip"))
    work = Path(tempfile.mkdtemp(prefix="ofa-caption-goldens-"))
    for name in CAPTION_CHECKPOINTS:
        record_checkpoint(name, work)


if __name__ == "__main__":
    main()
