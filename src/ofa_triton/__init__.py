"""Serve OFA visual entailment on NVIDIA Triton: checkpoint loading, preprocessing identical to
ModelScope's, an export-ready PyTorch model, ONNX export and the Triton model repository."""

__version__ = "0.1.0"
