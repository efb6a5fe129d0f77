"""Regenerate the visual-grounding goldens with ModelScope's own pipeline.

Run it in the reference environment, from the repository root (optionally naming checkpoints):

    .venv-ref/bin/python tests/golden/make_grounding_goldens.py [grounding_tiny ...]

It writes each checkpoint of ``cases.GROUNDING_CHECKPOINTS`` with this project's generator and
asks ``modelscope.pipelines.pipeline(Tasks.visual_grounding, model=<dir>)`` to ground every case
of ``cases.grounding_cases()`` ({'image': path, 'text': referring expression}). Recorded per
case: the image and its sha256, the text, the source token ids of ModelScope's preprocessor
(the text through pre_caption inside ' which region does the text " {} " describe?'), its
w/h resize ratios, the pipeline's output (without its 'samples' echo), ``box`` and ``score``
(the output's only box and score), ``bins`` (the best hypothesis' tokens less eos, minus the
first bin id) and ``hypotheses``, every finished hypothesis of the beam search (tokens and
normalized score, best first), observed on the pipeline's own SequenceGenerator.

ModelScope behaviour these goldens pin down (modelscope 1.40.2; ofa_for_all_tasks.py
_visual_grounding_inference, preprocessors/ofa/visual_grounding.py, generate/
sequence_generator.py):
- box = (token - vocab_length + num_bins) / (num_bins - 1) * max_image_size, then x / w ratio
  and y / h ratio, where the ratios are patch_image_size / width and patch_image_size /
  height of the image as load_image returns it (EXIF orientation applied): computed in
  float32 torch (tokens int64, true division) and returned by .tolist() as Python floats of
  float32 values, [[x0, y0, x1, y1]] (a list per image; the order of corners is the
  generated one, x1 < x0 is not corrected, nor clipped).
  max_image_size (default 512) is not the patch size: when they differ, boxes scale by their
  ratio. vocab_length is len(tokenizer.get_vocab()) with the 8192 codes and 1000 bins added.
- 'scores' is the constant [1.0] per image; postprocess does not unwrap grounding outputs
  (unlike the other tasks); 'caption', 'text', 'labels' are present with None.
- constraint_range "a,b" masks the logits of ids 4..a-1 and b.. before the log-softmax: the
  four special tokens (bos, pad, eos, unk) stay allowed; pad is masked later, eos by min_len
  until the last step, where only eos is allowed. A generated bos or unk would produce a
  negative coordinate (the weights are shaped so that bins dominate).
- the best hypothesis' tokens are used as they are: tokens[:-1] drops the final eos.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from ofa_triton.tiny_checkpoint import generate_tiny_checkpoint  # noqa: E402
from tests.golden.cases import GROUNDING_CHECKPOINTS, grounding_cases, write_images  # noqa: E402
from tests.golden.generation_goldens import (GOLDEN_DIR, GenerationRecorder,  # noqa: E402
                                             checkpoint_header, image_sha256, load_pipeline,
                                             plain_output, write_golden)


def golden_path(checkpoint: str) -> Path:
    return GOLDEN_DIR / f"{checkpoint}_visual_grounding.json"


def record_checkpoint(name: str, work: Path) -> None:
    from modelscope.utils.constant import Tasks

    arguments = GROUNDING_CHECKPOINTS[name]
    checkpoint = generate_tiny_checkpoint(work / name, **arguments)
    images = write_images(work / "images")
    pipe = load_pipeline(Tasks.visual_grounding, checkpoint)
    model = pipe.model
    recorder = GenerationRecorder(model.generator)
    first_bin = len(model.tokenizer.get_vocab()) - model.cfg.num_bins
    records = []
    for case in grounding_cases():
        data = {"image": str(images[case.image]), "text": case.text}
        sample = pipe.preprocessor(data)
        result = pipe(data)
        [box] = result["boxes"]
        [score] = result["scores"]
        [hypotheses] = recorder.last
        records.append({
            "name": case.name,
            "image": case.image,
            "image_sha256": image_sha256(images[case.image]),
            "text": case.text,
            "source_ids": sample["net_input"]["input_ids"][0].tolist(),
            "w_resize_ratio": float(sample["w_resize_ratios"][0]),
            "h_resize_ratio": float(sample["h_resize_ratios"][0]),
            "output": plain_output(result),
            "box": box,
            "score": score,
            "bins": [t - first_bin for t in hypotheses[0]["tokens"][:-1]],
            "hypotheses": hypotheses,
        })
        print(f"{name} {case.name} {case.image} {case.text[:30]!r}: {records[-1]['bins']} "
              f"{[round(v, 2) for v in box]}", flush=True)
    header = checkpoint_header(name, arguments, checkpoint, model)
    header["first_bin_id"] = first_bin
    write_golden(golden_path(name), header, records)


def main(names: list[str]) -> None:
    work = Path(tempfile.mkdtemp(prefix="ofa-grounding-goldens-"))
    for name in names or GROUNDING_CHECKPOINTS:
        record_checkpoint(name, work)


if __name__ == "__main__":
    main(sys.argv[1:])
