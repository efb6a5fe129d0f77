"""Triton adapter: answer scores -> label, confidence, probabilities
(ofa_triton.tasks.visual_entailment.labels)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from ofa_triton.manifest import checked_version_directory
from ofa_triton.triton_requests import input_array, respond_each
from ofa_triton.settings import ServingSettings
from ofa_triton.tasks.visual_entailment.labels import scores_to_outputs
from ofa_triton.tensor_names import ANSWER_SCORES
from ofa_triton.warmup import warm_up


class TritonPythonModel:
    def initialize(self, args):
        version_dir = checked_version_directory(args, pb_utils.Logger.log_warn)
        self.answers = ServingSettings.read(version_dir).task.answers
        seconds = warm_up(args, lambda sample: scores_to_outputs(sample[ANSWER_SCORES],
                                                                  self.answers))
        pb_utils.Logger.log_info(f"{args['model_name']}: warmed up in {seconds * 1000:.0f} ms")

    def _one(self, request):
        scores = input_array(pb_utils, request, ANSWER_SCORES)
        labels, confidence, probabilities = scores_to_outputs(scores, self.answers)
        return {"label": np.array([[label.encode()] for label in labels], dtype=np.object_),
                "confidence": confidence[:, None], "probabilities": probabilities}

    def execute(self, requests):
        return respond_each(pb_utils, requests, self._one, "postprocessing")
