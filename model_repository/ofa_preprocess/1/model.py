"""Triton adapter: image bytes + texts -> token ids and pixels (ofa_triton.preprocessing).

Each request is preprocessed on its own; a bad one gets its own INVALID_ARG error and the
others of the dynamic batch go on.
"""

from pathlib import Path

import triton_python_backend_utils as pb_utils

from ofa_triton.image import ImageDecodeError
from ofa_triton.manifest import verify_version_directory
from ofa_triton.preprocessing import VisualEntailmentPreprocessor, stack
from ofa_triton.runtime import RequestError, rows, text_from_bytes


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        verify_version_directory(version_dir)   # refuse artifacts that differ from the manifest
        self.preprocessor = VisualEntailmentPreprocessor.from_directory(version_dir)

    def _one(self, request):
        images = pb_utils.get_input_tensor_by_name(request, "image")
        hypotheses = pb_utils.get_input_tensor_by_name(request, "hypothesis")
        premises = pb_utils.get_input_tensor_by_name(request, "premise")
        images = images.as_numpy()
        batch = images.shape[0]
        samples = []
        for image, hypothesis, premise in zip(
                rows(images, "image", batch), rows(hypotheses.as_numpy(), "hypothesis", batch),
                rows(None if premises is None else premises.as_numpy(), "premise", batch)):
            samples.append(self.preprocessor(
                bytes(image), text_from_bytes(hypothesis, "hypothesis"),
                None if premise is None else text_from_bytes(premise, "premise")))
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(name, value) for name, value in stack(samples).items()])

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
