"""Triton adapter: the generator's tokens or answer index -> the answer, exactly as ModelScope
words it (ofa_triton.tasks.visual_question_answering.answer_text)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from ofa_triton.manifest import checked_version_directory
from ofa_triton.triton_requests import input_array, respond_each
from ofa_triton.settings import ServingSettings
from ofa_triton.tasks.visual_question_answering import answer_text
from ofa_triton.text import OfaTextEncoder
from ofa_triton.warmup import warm_up


class TritonPythonModel:
    def initialize(self, args):
        version_dir = checked_version_directory(args, pb_utils.Logger.log_warn)
        self.settings = ServingSettings.read(version_dir).task
        self.text = OfaTextEncoder(version_dir / "vocab.json", version_dir / "merges.txt",
                                   max_src_length=self.settings.max_src_length,
                                   prompt_type=self.settings.prompt_type)
        seconds = warm_up(args, self._answers)
        pb_utils.Logger.log_info(f"{args['model_name']}: warmed up in {seconds * 1000:.0f} ms")

    def _answers(self, inputs):
        answers = [answer_text(self.text, tokens.tolist(), self.settings.answers, int(index[0]))
                   for tokens, index in zip(inputs["tokens"], inputs["answer_index"])]
        return {"answer": np.array([[a.encode("utf-8")] for a in answers], dtype=np.object_)}

    def execute(self, requests):
        return respond_each(pb_utils, requests, lambda request: self._answers(
            {name: input_array(pb_utils, request, name)
             for name in ("tokens", "answer_index")}), "postprocessing")
