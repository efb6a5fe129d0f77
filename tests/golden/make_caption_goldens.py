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

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from ofa_triton.tiny_checkpoint import generate_tiny_checkpoint  # noqa: E402
from tests.golden.cases import CAPTION_CHECKPOINTS, image_names, write_images  # noqa: E402
from tests.golden.generation_goldens import (GOLDEN_DIR, GenerationRecorder,  # noqa: E402
                                             image_sha256, install_stand_ins, load_pipeline)
from tests.golden.make_goldens import reference_versions  # noqa: E402


def golden_path(checkpoint: str) -> Path:
    return GOLDEN_DIR / f"{checkpoint}_image_captioning.json"


def record_checkpoint(name: str, work: Path) -> None:
    from modelscope.utils.constant import Tasks

    checkpoint = generate_tiny_checkpoint(work / name, **CAPTION_CHECKPOINTS[name])
    images = write_images(work / "images")
    pipe = load_pipeline(Tasks.image_captioning, checkpoint)
    recorder = GenerationRecorder(pipe.model.generator)
    records = []
    for index, image in enumerate(image_names()):
        path = images[image]
        sample = pipe.preprocessor({"image": str(path)})
        result = pipe(str(path))
        [caption] = result["caption"]
        [hypotheses] = recorder.last
        records.append({
            "name": f"case{index:02d}",
            "image": image,
            "image_sha256": image_sha256(path),
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
    install_stand_ins()
    work = Path(tempfile.mkdtemp(prefix="ofa-caption-goldens-"))
    for name in CAPTION_CHECKPOINTS:
        record_checkpoint(name, work)


if __name__ == "__main__":
    main()
