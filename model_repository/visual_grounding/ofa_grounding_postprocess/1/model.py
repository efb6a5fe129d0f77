"""Triton adapter: the generated bins and the image's size -> the box in its pixels, exactly
as ModelScope computes it (ofa_triton.tasks.visual_grounding.box)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from ofa_triton.manifest import checked_version_directory
from ofa_triton.triton_requests import input_array, respond_each
from ofa_triton.settings import ServingSettings
from ofa_triton.tasks.visual_grounding.box import box_from_tokens
from ofa_triton.warmup import warm_up


class TritonPythonModel:
    def initialize(self, args):
        version_dir = checked_version_directory(args, pb_utils.Logger.log_warn)
        settings = ServingSettings.read(version_dir)
        self.task, self.eos = settings.task, settings.eos_token_id
        seconds = warm_up(args, self._boxes)
        pb_utils.Logger.log_info(f"{args['model_name']}: warmed up in {seconds * 1000:.0f} ms")

    def _boxes(self, inputs):
        return {"box": np.stack([box_from_tokens(tokens, size, self.task, self.eos)
                                 for tokens, size in zip(inputs["tokens"],
                                                         inputs["image_size"])])}

    def execute(self, requests):
        return respond_each(pb_utils, requests, lambda request: self._boxes(
            {name: input_array(pb_utils, request, name)
             for name in ("tokens", "image_size")}), "postprocessing")
