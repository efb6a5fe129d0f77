"""OFA in plain PyTorch, written for export: no fairseq, no transformers modeling code."""

from .config import OfaArchitecture, UnsupportedCheckpointError
from .model import CheckpointMismatchError, OfaVisualEntailmentModel

__all__ = ["CheckpointMismatchError", "OfaArchitecture", "OfaVisualEntailmentModel",
           "UnsupportedCheckpointError"]
