"""Serve OFA (visual entailment, image captioning, visual question answering, visual grounding)
on NVIDIA Triton: checkpoint loading, preprocessing identical to ModelScope's, an export-ready
PyTorch model, the exported encoder-decoders and the Triton model repository."""

# An exported repository's model.py files import this package; a release that moves what they
# import (0.2.0: the request helpers moved from runtime.py to triton_requests.py) needs a
# re-export, and the load-time check refuses a version exported under another major.minor.
__version__ = "0.2.0"
