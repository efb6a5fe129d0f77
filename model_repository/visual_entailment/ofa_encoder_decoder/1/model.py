"""Triton adapter: the encoder-decoder step in the runtime its version was exported for
(ofa_triton.runtime.open_encoder_decoder: onnxruntime, or the PyTorch runtime).

All requests of a dynamic batch run as one call; the scores are split back per request.
KIND_GPU instances run on the instance's GPU.
"""

import json
import triton_python_backend_utils as pb_utils

from ofa_triton.manifest import checked_version_directory
from ofa_triton.runtime import RuntimeParameters, open_encoder_decoder
from ofa_triton.triton_requests import respond_batched
from ofa_triton.tensor_names import ANSWER_SCORES, SCORER_INPUTS
from ofa_triton.warmup import warm_up


class TritonPythonModel:
    def initialize(self, args):
        version_dir = checked_version_directory(args, pb_utils.Logger.log_warn)
        config = json.loads(args["model_config"])
        self.encoder_decoder = open_encoder_decoder(
            version_dir, instance_kind=args["model_instance_kind"],
            device_id=int(args["model_instance_device_id"]),
            parameters=RuntimeParameters.from_model_config(config),
            max_batch_size=config["max_batch_size"])
        seconds = warm_up(args, self.encoder_decoder)
        pb_utils.Logger.log_info(f"{args['model_name']}: {self.encoder_decoder.description}, "
                                 f"warmed up in {seconds * 1000:.0f} ms")

    def execute(self, requests):
        return respond_batched(pb_utils, requests, SCORER_INPUTS,
                               lambda batch: {ANSWER_SCORES: self.encoder_decoder(batch)},
                               "encoder-decoder")
