"""Triton adapter: image bytes + texts -> token ids and pixels
(ofa_triton.tasks.visual_entailment.preprocessing).

Each request is preprocessed on its own; a bad one gets its own INVALID_ARG error and the
others of the dynamic batch go on.
"""

import triton_python_backend_utils as pb_utils

from ofa_triton.manifest import checked_version_directory
from ofa_triton.triton_requests import input_array, respond_each, rows, text_from_bytes
from ofa_triton.tasks.visual_entailment.preprocessing import VisualEntailmentPreprocessor, stack
from ofa_triton.warmup import warm_up

class TritonPythonModel:
    def initialize(self, args):
        version_dir = checked_version_directory(args, pb_utils.Logger.log_warn)
        self.preprocessor = VisualEntailmentPreprocessor.from_directory(version_dir)
        seconds = warm_up(args, self._preprocess)
        pb_utils.Logger.log_info(f"{args['model_name']}: warmed up in {seconds * 1000:.0f} ms")

    def _preprocess(self, inputs):
        """{"image", "hypothesis"[, "premise"]: [batch, 1] strings} -> the model inputs."""
        batch = inputs["image"].shape[0]
        samples = []
        for image, hypothesis, premise in zip(
                rows(inputs["image"], "image", batch),
                rows(inputs["hypothesis"], "hypothesis", batch),
                rows(inputs.get("premise"), "premise", batch)):
            samples.append(self.preprocessor(
                bytes(image), text_from_bytes(hypothesis, "hypothesis"),
                None if premise is None else text_from_bytes(premise, "premise")))
        return stack(samples)

    def _one(self, request):
        premise = pb_utils.get_input_tensor_by_name(request, "premise")   # optional
        inputs = {name: input_array(pb_utils, request, name) for name in ("image", "hypothesis")}
        return self._preprocess(inputs if premise is None
                                else {**inputs, "premise": premise.as_numpy()})

    def execute(self, requests):
        return respond_each(pb_utils, requests, self._one, "preprocessing")
