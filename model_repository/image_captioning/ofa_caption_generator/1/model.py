"""Triton adapter: prompt ids and pixels -> the best caption's tokens and score: the shared
generator model (ofa_triton.generation.triton_model)."""

from ofa_triton.generation.triton_model import TritonPythonModel  # noqa: F401
