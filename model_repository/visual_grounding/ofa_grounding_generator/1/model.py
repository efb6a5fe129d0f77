"""Triton adapter: prompt ids and pixels -> the generator's outputs: the shared generator
model (ofa_triton.generation.triton_model)."""

from ofa_triton.generation.triton_model import TritonPythonModel  # noqa: F401
