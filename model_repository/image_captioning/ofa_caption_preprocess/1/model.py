"""Triton adapter: image bytes -> prompt ids and pixels
(ofa_triton.tasks.image_captioning.preprocessing).

Each request is preprocessed on its own; a bad one gets its own INVALID_ARG error and the
others of the dynamic batch go on.
"""

from pathlib import Path

import triton_python_backend_utils as pb_utils

from ofa_triton.manifest import verify_version_directory
from ofa_triton.runtime import respond_each, rows
from ofa_triton.tasks.image_captioning.preprocessing import CaptionPreprocessor, stack
from ofa_triton.warmup import warm_up


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        verify_version_directory(version_dir)   # refuse artifacts that differ from the manifest
        self.preprocessor = CaptionPreprocessor.from_directory(version_dir)
        seconds = warm_up(args, self._preprocess)
        pb_utils.Logger.log_info(f"{args['model_name']}: warmed up in {seconds * 1000:.0f} ms")

    def _preprocess(self, inputs):
        """{"image": [batch, 1] strings} -> the model inputs."""
        images = rows(inputs["image"], "image", inputs["image"].shape[0])
        return stack([self.preprocessor(bytes(image)) for image in images])

    def execute(self, requests):
        return respond_each(pb_utils, requests, lambda request: self._preprocess(
            {"image": pb_utils.get_input_tensor_by_name(request, "image").as_numpy()}),
            "preprocessing")
