"""Triton adapter: answer scores -> label, confidence, probabilities (ofa_triton.tasks.visual_entailment.labels)."""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from ofa_triton.tasks.visual_entailment.labels import scores_to_outputs
from ofa_triton.manifest import verify_version_directory
from ofa_triton.settings import ServingSettings
from ofa_triton.warmup import warm_up


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        verify_version_directory(version_dir)   # refuse artifacts that differ from the manifest
        self.answers = ServingSettings.read(version_dir).task.answers
        seconds = warm_up(args, lambda sample: scores_to_outputs(sample["answer_scores"],
                                                                  self.answers))
        pb_utils.Logger.log_info(f"{args['model_name']}: warmed up in {seconds * 1000:.0f} ms")

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                scores = pb_utils.get_input_tensor_by_name(request, "answer_scores").as_numpy()
                labels, confidence, probabilities = scores_to_outputs(scores, self.answers)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("label", np.array([[l.encode()] for l in labels],
                                                      dtype=np.object_)),
                    pb_utils.Tensor("confidence", confidence[:, None]),
                    pb_utils.Tensor("probabilities", probabilities),
                ]))
            except Exception as error:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"postprocessing failed: {type(error).__name__}: {error}")))
        return responses
