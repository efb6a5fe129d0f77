"""Triton adapter: image bytes + question -> question ids and pixels
(ofa_triton.tasks.visual_question_answering.preprocessing), through the shared preprocessing
model (ofa_triton.tasks.triton_preprocess)."""

from ofa_triton.tasks.triton_preprocess import preprocessing_model
from ofa_triton.tasks.visual_question_answering.preprocessing import VqaPreprocessor

TritonPythonModel = preprocessing_model(VqaPreprocessor, texts=("question",))
