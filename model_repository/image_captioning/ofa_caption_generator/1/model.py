"""Triton adapter: prompt ids and pixels -> the best caption's tokens
(ofa_triton.tasks.image_captioning.runtime).

All requests of a dynamic batch run as one beam search; the tokens are split back per request.
KIND_GPU instances run on the instance's GPU.
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from ofa_triton.manifest import verify_version_directory
from ofa_triton.runtime import RuntimeParameters, respond_batched
from ofa_triton.tasks.image_captioning.runtime import CaptionGenerator
from ofa_triton.warmup import warm_up

INPUTS = ("input_ids", "patch_images")


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        verify_version_directory(version_dir)   # refuse artifacts that differ from the manifest
        parameters = RuntimeParameters.from_model_config(json.loads(args["model_config"]))
        self.generator = CaptionGenerator(
            version_dir, instance_kind=args["model_instance_kind"],
            device_id=int(args["model_instance_device_id"]),
            threads=parameters.intra_op_threads, device=parameters.torch_device)
        seconds = warm_up(args, self.generator)
        pb_utils.Logger.log_info(f"{args['model_name']}: {self.generator.description}, "
                                 f"warmed up in {seconds * 1000:.0f} ms")

    def _generate(self, batch):
        tokens, scores = self.generator(batch)
        return {"caption_tokens": tokens, "caption_score": scores[:, None]}

    def execute(self, requests):
        return respond_batched(pb_utils, requests, INPUTS, self._generate, "caption generation")
