"""The Triton Python model of every generating task's generator (``ofa_caption_generator``,
``ofa_vqa_generator``, ``ofa_grounding_generator``): preprocessed requests in, the generator's
outputs (runtime.Generator) out, under the output names the model's config declares.

Each task's ``1/model.py`` imports this class: one adapter, not three copies. It imports
triton_python_backend_utils, which exists only inside Triton's Python stub.

All requests of a dynamic batch run as one beam search (or one scoring of the answers); the
outputs are split back per request. KIND_GPU instances run on the instance's GPU.
"""

import json
import triton_python_backend_utils as pb_utils

from ..manifest import checked_version_directory
from ..runtime import RuntimeParameters
from ..triton_requests import respond_batched
from ..tensor_names import GENERATOR_INPUTS
from ..warmup import warm_up
from .runtime import Generator

INPUTS = GENERATOR_INPUTS


class TritonPythonModel:
    def initialize(self, args):
        version_dir = checked_version_directory(args, pb_utils.Logger.log_warn)
        config = json.loads(args["model_config"])
        parameters = RuntimeParameters.from_model_config(config)
        self.outputs = [output["name"] for output in config["output"]]
        self.generator = Generator(
            version_dir, instance_kind=args["model_instance_kind"],
            device_id=int(args["model_instance_device_id"]),
            threads=parameters.intra_op_threads, device=parameters.torch_device)
        seconds = warm_up(args, self.generator)
        pb_utils.Logger.log_info(f"{args['model_name']}: {self.generator.description}, "
                                 f"warmed up in {seconds * 1000:.0f} ms")

    def _generate(self, batch):
        out = self.generator(batch)
        return {name: out[name] for name in self.outputs}

    def execute(self, requests):
        return respond_batched(pb_utils, requests, INPUTS, self._generate, "generation")
