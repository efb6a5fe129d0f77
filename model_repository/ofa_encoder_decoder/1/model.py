"""Triton adapter: the exported ONNX scorer in onnxruntime (ofa_triton.runtime).

All requests of a dynamic batch run as one session call; the scores are split back per
request. KIND_GPU instances use the CUDA provider on the instance's device.
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from ofa_triton.manifest import verify_version_directory
from ofa_triton.runtime import (
    EncoderDecoderSession,
    concat_batches,
    split_rows,
    trim_padding,
)
from ofa_triton.settings import ServingSettings
from ofa_triton.warmup import warm_up

INPUTS = ("input_ids", "patch_images", "decoder_input_ids")


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        verify_version_directory(version_dir)   # refuse artifacts that differ from the manifest
        parameters = json.loads(args["model_config"]).get("parameters", {})
        threads = int(parameters.get("intra_op_threads", {}).get("string_value", "0"))
        self.session = EncoderDecoderSession(
            version_dir / "model.onnx", instance_kind=args["model_instance_kind"],
            device_id=int(args["model_instance_device_id"]), intra_op_threads=threads)
        self.pad_token_id = ServingSettings.read(version_dir).pad_token_id
        seconds = warm_up(args, self._score)
        pb_utils.Logger.log_info(f"{args['model_name']}: providers {self.session.providers}, "
                                 f"warmed up in {seconds * 1000:.0f} ms")

    def _score(self, batch):
        return self.session(trim_padding(batch, self.pad_token_id))

    def execute(self, requests):
        try:
            batch, sizes = concat_batches([
                {name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in INPUTS}
                for r in requests])
            scores = split_rows(self._score(batch), sizes)
        except Exception as error:  # one error per request, never an escaped exception
            message = f"encoder-decoder failed: {type(error).__name__}: {error}"
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
                    for _ in requests]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("answer_scores", s)])
                for s in scores]
