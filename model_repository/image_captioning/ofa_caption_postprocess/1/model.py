"""Triton adapter: caption tokens -> the caption, exactly as ModelScope words it
(ofa_triton.tasks.image_captioning.caption_text)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from ofa_triton.manifest import checked_version_directory
from ofa_triton.triton_requests import input_array, respond_each
from ofa_triton.settings import ServingSettings
from ofa_triton.tasks.image_captioning import caption_text
from ofa_triton.text import OfaTextEncoder
from ofa_triton.warmup import warm_up


class TritonPythonModel:
    def initialize(self, args):
        version_dir = checked_version_directory(args, pb_utils.Logger.log_warn)
        settings = ServingSettings.read(version_dir).task
        self.text = OfaTextEncoder(version_dir / "vocab.json", version_dir / "merges.txt",
                                   max_src_length=settings.max_src_length,
                                   prompt_type=settings.prompt_type)
        seconds = warm_up(args, lambda sample: self._captions(sample["tokens"]))
        pb_utils.Logger.log_info(f"{args['model_name']}: warmed up in {seconds * 1000:.0f} ms")

    def _captions(self, tokens):
        return np.array([[caption_text(self.text, row.tolist()).encode("utf-8")]
                         for row in tokens], dtype=np.object_)

    def execute(self, requests):
        return respond_each(pb_utils, requests, lambda request: {"caption": self._captions(
            input_array(pb_utils, request, "tokens"))},
            "postprocessing")
