"""Triton adapter: image bytes + referring text -> prompt ids, pixels and the image's size
(ofa_triton.tasks.visual_grounding.preprocessing), through the shared preprocessing model
(ofa_triton.tasks.triton_preprocess)."""

from ofa_triton.tasks.triton_preprocess import preprocessing_model
from ofa_triton.tasks.visual_grounding.preprocessing import GroundingPreprocessor

TritonPythonModel = preprocessing_model(GroundingPreprocessor, texts=("text",))
