"""Triton adapter: image bytes -> prompt ids and pixels
(ofa_triton.tasks.image_captioning.preprocessing), through the shared preprocessing model
(ofa_triton.tasks.triton_preprocess)."""

from ofa_triton.tasks.image_captioning.preprocessing import CaptionPreprocessor
from ofa_triton.tasks.triton_preprocess import preprocessing_model

TritonPythonModel = preprocessing_model(CaptionPreprocessor)
