"""Regenerate the visual-entailment goldens with ModelScope's own pipeline.

Run it in the reference environment (see export/reference/README.md), from the repository root:

    .venv-ref/bin/python tests/golden/make_goldens.py

It writes the tiny checkpoint with this project's generator, the image corpus of cases.py, and
then asks ``modelscope.pipelines.pipeline(Tasks.visual_entailment, model=<dir>)`` for every
case. Recorded per case: ModelScope's source token ids, decoder prompt and pixel tensor (from
the pipeline's own preprocessor), its label and score, and all answer probabilities (the
softmax that ``OfaForAllTasks._traverse_inference`` computes; the pipeline returns only the
winner, so that softmax call is observed, not recomputed).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from ofa_triton.tiny_checkpoint import generate_tiny_checkpoint  # noqa: E402
from tests.golden.cases import (CHECKPOINTS, PUBLISHED_SIZES, PUBLISHED_VOCAB_SIZE,  # noqa: E402
                               cases_for, write_images)

GOLDEN_DIR = Path(__file__).resolve().parent


class _SoftmaxRecorder:
    """Stands in for ``torch.nn.functional`` inside ofa_for_all_tasks only, recording the
    answer softmax of _traverse_inference and otherwise passing every call through."""

    def __init__(self, functional):
        self._functional = functional
        self.last = None

    def softmax(self, *args, **kwargs):
        out = self._functional.softmax(*args, **kwargs)
        self.last = out.detach().cpu().numpy().copy()
        return out

    def __getattr__(self, name):
        return getattr(self._functional, name)


def reference_versions() -> dict[str, str]:
    """The reference environment's versions that decide the outputs."""
    return {pkg: metadata.version(pkg) for pkg in
            ("modelscope", "torch", "torchvision", "torchaudio", "transformers", "pillow",
             "numpy", "fairseq-fixed")}


def golden_paths(checkpoint: str) -> tuple[Path, Path]:
    return (GOLDEN_DIR / f"{checkpoint}_visual_entailment.json",
            GOLDEN_DIR / f"{checkpoint}_pixels.npz")


ARCHITECTURES_GOLDEN = GOLDEN_DIR / "architectures.json.gz"


def record_checkpoint(name: str, work: Path, recorder: "_SoftmaxRecorder") -> None:
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    checkpoint = generate_tiny_checkpoint(work / name, **CHECKPOINTS[name])
    images = write_images(work / "images")
    generated = json.loads((checkpoint / "GENERATED.json").read_text())
    pipe = pipeline(Tasks.visual_entailment, model=str(checkpoint))
    model = pipe.model
    # Fail loudly if ModelScope did not load every tensor of the generated checkpoint.
    _, info = type(model.model).from_pretrained(str(checkpoint), output_loading_info=True)
    if any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        raise SystemExit(f"ModelScope did not load {name} cleanly: {info}")
    answers = [model.index2ans[i] for i in range(len(model.index2ans))]

    records, pixels = [], {}
    for case in cases_for(name):
        data = {"image": str(images[case.image]), "text": case.hypothesis}
        if case.premise:  # an empty premise means the hypothesis-only prompt (no text2)
            data["text2"] = case.premise
        sample = pipe.preprocessor(data)
        result = pipe(data)
        records.append({
            "name": case.name,
            "image": case.image,
            "image_sha256": hashlib.sha256(images[case.image].read_bytes()).hexdigest(),
            "hypothesis": case.hypothesis,
            "premise": case.premise,
            "source_ids": sample["net_input"]["input_ids"][0].tolist(),
            "decoder_prompt_ids": [int(t) for t in sample["decoder_prompts"][0]],
            "answer": result["labels"],
            "score": float(result["scores"]),
            "probabilities": [float(p) for p in recorder.last[0]],
        })
        pixels[case.name] = sample["net_input"]["patch_images"][0].numpy().astype(np.float32)
        print(f"{name} {case.name}: {result['labels']} {float(result['scores']):.6f}", flush=True)

    versions = reference_versions()
    json_path, pixels_path = golden_paths(name)
    json_path.write_text(json.dumps({
        "generator": generated,
        "generator_arguments": CHECKPOINTS[name],
        "checkpoint_settings": json.loads((checkpoint / "configuration.json").read_text())["model"],
        "answers": answers,
        "reference_versions": versions,
        "cases": records,
    }, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    np.savez_compressed(pixels_path, **pixels)
    print(f"wrote {json_path} and {pixels_path} ({len(records)} cases)")


def record_architectures() -> None:
    """Tensor names and shapes of ModelScope's OFAModel for each published size."""
    import torch
    from modelscope.models.multi_modal.ofa import OFAModel
    from modelscope.models.multi_modal.ofa.configuration_ofa import OFAConfig

    shapes = {}
    for size, dims in PUBLISHED_SIZES.items():
        with torch.no_grad():
            model = OFAModel(OFAConfig(vocab_size=PUBLISHED_VOCAB_SIZE, **dims))
        shapes[size] = {k: list(v.shape) for k, v in model.state_dict().items()}
        print(f"{size}: {len(shapes[size])} tensors, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters", flush=True)
        del model
    ARCHITECTURES_GOLDEN.write_bytes(gzip.compress(json.dumps(shapes).encode(), mtime=0))


def main() -> None:
    from modelscope.models.multi_modal import ofa_for_all_tasks

    recorder = _SoftmaxRecorder(ofa_for_all_tasks.F)
    ofa_for_all_tasks.F = recorder
    work = Path(tempfile.mkdtemp(prefix="ofa-goldens-"))
    for name in CHECKPOINTS:
        record_checkpoint(name, work, recorder)
    record_architectures()


if __name__ == "__main__":
    main()
