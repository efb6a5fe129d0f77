"""Triton adapter: image bytes + texts -> token ids and pixels (ofa_triton.tasks.visual_entailment.preprocessing).

Each request is preprocessed on its own; a bad one gets its own INVALID_ARG error and the
others of the dynamic batch go on.
"""

from pathlib import Path

import triton_python_backend_utils as pb_utils

from ofa_triton.image import ImageDecodeError
from ofa_triton.manifest import verify_version_directory
from ofa_triton.tasks.visual_entailment.preprocessing import VisualEntailmentPreprocessor, stack
from ofa_triton.runtime import RequestError, rows, text_from_bytes
from ofa_triton.warmup import warm_up


INPUTS = ("image", "hypothesis", "premise")


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        verify_version_directory(version_dir)   # refuse artifacts that differ from the manifest
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
        tensors = {name: pb_utils.get_input_tensor_by_name(request, name) for name in INPUTS}
        outputs = self._preprocess({name: tensor.as_numpy() for name, tensor in tensors.items()
                                    if tensor is not None})
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(name, value) for name, value in outputs.items()])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except (RequestError, ImageDecodeError) as error:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    str(error), pb_utils.TritonError.INVALID_ARG)))
            except Exception as error:  # never let one request fail the batch
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"preprocessing failed: {type(error).__name__}: {error}")))
        return responses
