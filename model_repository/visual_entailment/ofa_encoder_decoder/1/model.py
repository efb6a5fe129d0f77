"""Triton adapter: the encoder-decoder step in the runtime its version was exported for
(ofa_triton.runtime.open_encoder_decoder: onnxruntime, or the PyTorch runtime).

All requests of a dynamic batch run as one call; the scores are split back per request.
KIND_GPU instances run on the instance's GPU.
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from ofa_triton.manifest import verify_version_directory
from ofa_triton.runtime import (
    RuntimeParameters,
    concat_batches,
    open_encoder_decoder,
    split_rows,
)
from ofa_triton.warmup import warm_up

INPUTS = ("input_ids", "patch_images", "decoder_input_ids")


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        verify_version_directory(version_dir)   # refuse artifacts that differ from the manifest
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
        try:
            batch, sizes = concat_batches([
                {name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in INPUTS}
                for r in requests])
            scores = split_rows(self.encoder_decoder(batch), sizes)
        except Exception as error:  # one error per request, never an escaped exception
            message = f"encoder-decoder failed: {type(error).__name__}: {error}"
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
                    for _ in requests]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("answer_scores", s)])
                for s in scores]
