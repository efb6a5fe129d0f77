"""Regenerate the visual-question-answering goldens with ModelScope's own pipeline.

Run it in the reference environment, from the repository root (optionally naming checkpoints):

    .venv-ref/bin/python tests/golden/make_vqa_goldens.py [vqa_free vqa_trie vqa_traverse]

It writes each checkpoint of ``cases.VQA_CHECKPOINTS`` with this project's generator and asks
``modelscope.pipelines.pipeline(Tasks.visual_question_answering, model=<dir>)`` to answer every
case of ``cases.vqa_cases()`` ({'image': path, 'text': question}). Recorded per case: the image
and its sha256, the question, the source token ids and decoder prompt of ModelScope's
preprocessor, the pipeline's output (without its 'samples' echo) and:
- gen_type "generation" (free, or constrained to answer2label by a trie): ``answer``, the
  string of the output's one-element 'text' list; ``hypotheses``, every finished hypothesis of
  the beam search (tokens and normalized score, best first), observed on the pipeline's own
  SequenceGenerator, not recomputed;
- gen_type "traverse": ``answer`` and ``score`` (the output's 'labels' and 'scores', plain
  values), ``answer_scores`` (per answer, in answer2label order, the summed log-probabilities
  of its tokens and eos that _traverse_inference ranks) and ``probabilities`` (their softmax),
  both observed on its softmax call.

ModelScope behaviour these goldens pin down (modelscope 1.40.2; see ofa_for_all_tasks.py,
preprocessors/ofa/visual_question_answering.py, generate/sequence_generator.py):
- generation ignores prompt_type: the preprocessor builds a decoder prompt ('none': [bos];
  'src': the source; 'prev_output': the source without eos) but _text_gen_inference passes no
  prefix_tokens, so the SequenceGenerator always starts from [bos]. Only traverse reads the
  decoder prompt (scoring prompt[1:] + answer + eos after prompt + answer). All three prompt
  types run; none crashed.
- outputs: generation returns {'text': [answer], 'scores': None, ...}; with an answer list it
  also returns 'scores': [1.0] (a constant). Traverse returns {'labels': answer (a str, not a
  list), 'scores': probability (a float), 'text': None, ...}. Keys 'caption', 'boxes' (and
  'labels' or 'text') are present with None.
- the answer trie is built from the tokenizer's ids of ' ' + answer (not truncated); answers
  are indexed by their order in answer2label.json, not by its values. Trie-constrained
  generation asserts beam_size <= number of answers (generate_tiny_checkpoint refuses it
  earlier). Traverse scores answers in chunks of model.valid_batch_size (default batch_size,
  1), each answer alone here.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from ofa_triton.tiny_checkpoint import generate_tiny_checkpoint  # noqa: E402
from tests.golden.cases import VQA_CHECKPOINTS, vqa_cases, write_images  # noqa: E402
from tests.golden.generation_goldens import (GOLDEN_DIR, GenerationRecorder,  # noqa: E402
                                             checkpoint_header, image_sha256, load_pipeline,
                                             plain_output, write_golden)
from tests.golden.make_goldens import _SoftmaxRecorder  # noqa: E402


def golden_path(checkpoint: str) -> Path:
    return GOLDEN_DIR / f"{checkpoint}_visual_question_answering.json"


class _TraverseRecorder(_SoftmaxRecorder):
    """Also keeps the softmax's input: _traverse_inference's per-answer scores."""

    def __init__(self, functional):
        super().__init__(functional)
        self.last_input = None

    def softmax(self, *args, **kwargs):
        self.last_input = args[0].detach().cpu().numpy().copy()
        return super().softmax(*args, **kwargs)


def record_checkpoint(name: str, work: Path, traverse: _TraverseRecorder) -> None:
    from modelscope.utils.constant import Tasks

    arguments = VQA_CHECKPOINTS[name]
    checkpoint = generate_tiny_checkpoint(work / name, **arguments)
    images = write_images(work / "images")
    pipe = load_pipeline(Tasks.visual_question_answering, checkpoint)
    model = pipe.model
    generation = model.gen_type == "generation"
    recorder = GenerationRecorder(model.generator) if generation else None
    records = []
    for case in vqa_cases():
        data = {"image": str(images[case.image]), "text": case.text}
        sample = pipe.preprocessor(data)
        traverse.last = traverse.last_input = None
        result = pipe(data)
        record = {
            "name": case.name,
            "image": case.image,
            "image_sha256": image_sha256(images[case.image]),
            "text": case.text,
            "source_ids": sample["net_input"]["input_ids"][0].tolist(),
            "decoder_prompt_ids": [int(t) for t in sample["decoder_prompts"][0]],
            "output": plain_output(result),
        }
        if generation:
            [answer] = result["text"]
            [hypotheses] = recorder.last
            record.update(answer=answer, hypotheses=hypotheses)
        else:
            record.update(answer=result["labels"], score=float(result["scores"]),
                          answer_scores=[float(s) for s in traverse.last_input[0]],
                          probabilities=[float(p) for p in traverse.last[0]])
        records.append(record)
        print(f"{name} {case.name} {case.image} {case.text[:30]!r}: {record['answer']!r}",
              flush=True)
    header = checkpoint_header(name, arguments, checkpoint, model)
    header["gen_type"] = model.gen_type
    header["answers"] = [model.index2ans[i] for i in range(len(model.index2ans))] or None
    header["answer_token_ids"] = ([[int(t) for t in item] for chunk in model.val_ans_l
                                   for item in chunk] if model.index2ans else None)
    write_golden(golden_path(name), header, records)


def main(names: list[str]) -> None:
    from modelscope.models.multi_modal import ofa_for_all_tasks

    traverse = _TraverseRecorder(ofa_for_all_tasks.F)
    ofa_for_all_tasks.F = traverse
    work = Path(tempfile.mkdtemp(prefix="ofa-vqa-goldens-"))
    for name in names or VQA_CHECKPOINTS:
        record_checkpoint(name, work, traverse)


if __name__ == "__main__":
    main(sys.argv[1:])
