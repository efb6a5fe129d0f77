"""ModelScope's own answers for any OFA checkpoint: the reference half of
tests/test_real_checkpoint.py.

Run it in the reference environment, from the repository root:

    .venv-ref/bin/python tests/golden/reference_answers.py CHECKPOINT_DIR CASES.json OUT.json

CHECKPOINT_DIR is a checkpoint in ModelScope layout (a downloaded ``damo/ofa_*`` model, or one
this project generated). CASES.json (written by the test) holds ``task`` (the task the project
reads from configuration.json, spelled as ModelScope's ``Tasks`` constant), ``images_dir`` and
``cases``, each ``{"name", "image", "text", "text2"}`` (``image``: a file name in images_dir;
``text``: the hypothesis, question or referring expression, unused for captioning; ``text2``:
the entailment premise or null). It asks ``modelscope.pipelines.pipeline(task,
model=CHECKPOINT_DIR)`` for every case, exactly as the golden scripts do (their loader, which
refuses a checkpoint ModelScope does not load tensor for tensor, and their observers of the
answer softmax and of the beam search), and writes OUT.json: the request it answered (echoed,
so that a kept answer file can be matched to its checkpoint and cases), the reference
environment's versions, the answer list where the task has one, and per case:

- visual-entailment: ``answer`` (ModelScope's label: yes, no or maybe), ``score``, and
  ``probabilities`` (the softmax over the answers, in ``answers`` order, observed on
  _traverse_inference's softmax call as make_goldens.py does);
- image-captioning: ``caption`` and ``hypotheses`` (every finished hypothesis, best first);
- visual-question-answering: ``answer``; with ``hypotheses`` (generation) or ``score``,
  ``answer_scores`` and ``probabilities`` (traverse), as make_vqa_goldens.py records them;
- visual-grounding: ``box`` (x0, y0, x1, y1), ``score`` and ``hypotheses``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

# The golden scripts' pipeline-calling code (loader, observers, versions), shared, not copied.
from tests.golden.generation_goldens import (GenerationRecorder, image_sha256,  # noqa: E402
                                             install_stand_ins, load_pipeline, plain_output)
from tests.golden.make_goldens import reference_versions  # noqa: E402
from tests.golden.make_vqa_goldens import _TraverseRecorder  # noqa: E402

TASKS = ("visual-entailment", "image-captioning", "visual-question-answering",
         "visual-grounding")


def _entailment(pipe, softmax: _TraverseRecorder, case: dict, image: Path) -> dict:
    data = {"image": str(image), "text": case["text"]}
    if case.get("text2"):      # an empty premise means the hypothesis-only prompt (no text2)
        data["text2"] = case["text2"]
    softmax.last = softmax.last_input = None
    result = pipe(data)
    return {"answer": result["labels"], "score": float(result["scores"]),
            "probabilities": [float(p) for p in softmax.last[0]]}


def _caption(pipe, recorder: GenerationRecorder, case: dict, image: Path) -> dict:
    result = pipe(str(image))
    [caption] = result["caption"]
    [hypotheses] = recorder.last
    return {"caption": caption, "hypotheses": hypotheses}


def _vqa(pipe, recorder: GenerationRecorder | None, softmax: _TraverseRecorder, case: dict,
         image: Path) -> dict:
    softmax.last = softmax.last_input = None
    result = pipe({"image": str(image), "text": case["text"]})
    if recorder is not None:                                   # gen_type generation
        [answer] = result["text"]
        [hypotheses] = recorder.last
        return {"answer": answer, "hypotheses": hypotheses, "output": plain_output(result)}
    return {"answer": result["labels"], "score": float(result["scores"]),       # traverse
            "answer_scores": [float(s) for s in softmax.last_input[0]],
            "probabilities": [float(p) for p in softmax.last[0]],
            "output": plain_output(result)}


def _grounding(pipe, recorder: GenerationRecorder, case: dict, image: Path) -> dict:
    result = pipe({"image": str(image), "text": case["text"]})
    [box] = result["boxes"]
    [score] = result["scores"]
    [hypotheses] = recorder.last
    return {"box": [float(v) for v in box], "score": float(score), "hypotheses": hypotheses}


def answer_cases(checkpoint: Path, request: dict) -> dict:
    from modelscope.models.multi_modal import ofa_for_all_tasks

    task = request["task"]
    if task not in TASKS:
        raise SystemExit(f"task {task!r} is not one of {', '.join(TASKS)}")
    configured = json.loads((checkpoint / "configuration.json").read_text("utf-8")).get("task")
    if configured and configured.replace("_", "-") != task:
        raise SystemExit(f"{checkpoint}/configuration.json names task {configured!r}, the "
                         f"request {task!r}")
    softmax = _TraverseRecorder(ofa_for_all_tasks.F)
    ofa_for_all_tasks.F = softmax
    started = time.monotonic()
    pipe = load_pipeline(task, checkpoint)
    model = pipe.model
    loaded = time.monotonic()
    generating = task != "visual-entailment" and model.gen_type == "generation"
    recorder = GenerationRecorder(model.generator) if generating else None

    images = Path(request["images_dir"])
    records = []
    for case in request["cases"]:
        image = images / case["image"]
        if task == "visual-entailment":
            answer = _entailment(pipe, softmax, case, image)
        elif task == "image-captioning":
            answer = _caption(pipe, recorder, case, image)
        elif task == "visual-question-answering":
            answer = _vqa(pipe, recorder, softmax, case, image)
        else:
            answer = _grounding(pipe, recorder, case, image)
        records.append({"name": case["name"], "image": case["image"],
                        "image_sha256": image_sha256(image), **answer})
        shown = answer.get("caption", answer.get("box", answer.get("answer")))
        print(f"{case['name']} {case['image']} {str(case.get('text'))[:30]!r}: {shown!r}",
              flush=True)
    answers = [model.index2ans[i] for i in range(len(model.index2ans))] or None
    return {
        "request": request,
        "checkpoint": str(checkpoint),
        "reference_versions": reference_versions(),
        "gen_type": model.gen_type,
        "answers": answers,
        "seconds": {"load": round(loaded - started, 2),
                    "answer": round(time.monotonic() - loaded, 2)},
        "cases": records,
    }


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit(__doc__.split("\n\n")[1] if __doc__ else "usage: CHECKPOINT CASES OUT")
    checkpoint, cases_path, out_path = (Path(a) for a in argv)
    install_stand_ins()
    request = json.loads(cases_path.read_text("utf-8"))
    result = answer_cases(checkpoint.resolve(), request)
    out_path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n",
                        encoding="utf-8")
    print(f"wrote {out_path} ({len(result['cases'])} cases, {result['seconds']})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
