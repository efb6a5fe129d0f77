"""Helpers of the scripts that record goldens with ModelScope's own generation pipelines
(make_caption_goldens.py, make_vqa_goldens.py, make_grounding_goldens.py). Run in the reference
environment (.venv-ref); importing this module needs neither ModelScope nor torch."""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

from tests.golden.make_goldens import reference_versions

GOLDEN_DIR = Path(__file__).resolve().parent


class GenerationRecorder:
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


def install_stand_ins() -> None:
    """ModelScope's multi-modal pipelines import ``open_clip`` when they load, which OFA never
    calls: an empty stand-in module lets them load without that package."""
    sys.modules.setdefault("open_clip", types.ModuleType("open_clip"))


def load_pipeline(task: str, checkpoint: Path):
    """``modelscope.pipelines.pipeline(task, model=checkpoint)``, refusing a checkpoint that
    ModelScope's OFAModel does not load tensor for tensor."""
    from modelscope.pipelines import pipeline

    install_stand_ins()
    pipe = pipeline(task, model=str(checkpoint))
    _, info = type(pipe.model.model).from_pretrained(str(checkpoint), output_loading_info=True)
    if any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        raise SystemExit(f"ModelScope did not load {checkpoint} cleanly: {info}")
    return pipe


def image_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def plain_output(result: dict) -> dict:
    """The pipeline's output without 'samples' (its echo of the request, which holds the
    temporary image path)."""
    return {key: value for key, value in result.items() if key != "samples"}


def checkpoint_header(name: str, arguments: dict, checkpoint: Path, model) -> dict:
    """What the goldens of one generated checkpoint were made from, and the settings
    ModelScope's OfaForAllTasks read (``model``: the pipeline's model)."""
    return {
        "generator": json.loads((checkpoint / "GENERATED.json").read_text()),
        "generator_arguments": arguments,
        "checkpoint_settings": json.loads((checkpoint / "configuration.json").read_text())["model"],
        "reference_versions": reference_versions(),
        "vocab_length": len(model.tokenizer.get_vocab()),
        "num_bins": int(model.cfg.num_bins),
        "patch_image_size": int(model.patch_image_size),
        "max_image_size": int(model.max_image_size),
    }


def write_golden(path: Path, header: dict, records: list[dict]) -> None:
    path.write_text(json.dumps({**header, "cases": records}, indent=1, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    print(f"wrote {path} ({len(records)} cases)", flush=True)
