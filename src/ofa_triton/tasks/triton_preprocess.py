"""The Triton Python model of the generating tasks' preprocessing (``ofa_caption_preprocess``,
``ofa_vqa_preprocess``, ``ofa_grounding_preprocess``): image bytes and the task's texts in,
model tensors out, through the task's preprocessor (``tasks/<task>/preprocessing.py``).

    TritonPythonModel = preprocessing_model(VqaPreprocessor, texts=("question",))

is each task's whole ``1/model.py``: one adapter, not three copies. Each request is
preprocessed on its own; a bad one gets its own INVALID_ARG error and the others of the
dynamic batch go on. Imports triton_python_backend_utils, which exists only inside Triton's
Python stub.
"""

import triton_python_backend_utils as pb_utils

from ..manifest import checked_version_directory
from ..triton_requests import input_array, respond_each, rows, text_from_bytes
from ..warmup import warm_up
from .preprocessing import stack


def preprocessing_model(preprocessor_class, texts: tuple[str, ...] = ()):
    """A TritonPythonModel class whose requests carry ``image`` and the TYPE_STRING ``texts``,
    each passed to ``preprocessor_class(image, *texts)``."""
    names = ("image", *texts)

    class TritonPythonModel:
        def initialize(self, args):
            version_dir = checked_version_directory(args, pb_utils.Logger.log_warn)
            self.preprocessor = preprocessor_class.from_directory(version_dir)
            seconds = warm_up(args, self._preprocess)
            pb_utils.Logger.log_info(f"{args['model_name']}: warmed up in "
                                     f"{seconds * 1000:.0f} ms")

        def _preprocess(self, inputs):
            """{"image", *texts: [batch, 1] strings} -> the model inputs."""
            batch = inputs["image"].shape[0]
            columns = [rows(inputs[name], name, batch) for name in names]
            return stack([self.preprocessor(bytes(image), *(text_from_bytes(value, name)
                                                            for name, value in zip(texts, rest)))
                          for image, *rest in zip(*columns)])

        def execute(self, requests):
            return respond_each(pb_utils, requests, lambda request: self._preprocess(
                {name: input_array(pb_utils, request, name)
                 for name in names}), "preprocessing")

    return TritonPythonModel
