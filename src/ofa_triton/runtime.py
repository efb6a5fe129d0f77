"""What the Triton Python models do besides reading and writing tensors: pure functions and
small classes, testable without a server.

- ``RequestError``: a problem with one request, reported to its client as INVALID_ARG;
- ``text_from_bytes`` / ``rows``: TYPE_STRING tensors to str, with clear errors;
- ``concat_batches`` / ``split_rows``: merge the requests of a dynamic batch and split back;
- ``trim_padding``: drop the token columns that are padding in the whole batch;
- ``EncoderDecoderSession``: the onnxruntime session on the instance's device
  (``require_cuda``: a GPU instance never falls back to the CPU silently).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


class RequestError(ValueError):
    """The request is invalid; the message tells the client what to fix."""


def text_from_bytes(value: object, name: str) -> str:
    """One TYPE_STRING element (bytes) as UTF-8 text."""
    if isinstance(value, str):
        return value
    if not isinstance(value, (bytes, bytearray, np.bytes_)):
        raise RequestError(f"'{name}' must be a string, got {type(value).__name__}")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(f"'{name}' is not valid UTF-8 (byte {error.start})") from None


def rows(array: np.ndarray | None, name: str, batch: int) -> list[object]:
    """A [batch, 1] TYPE_STRING tensor as a list of its elements."""
    if array is None:
        return [None] * batch
    if array.ndim != 2 or array.shape[1] != 1:
        raise RequestError(f"'{name}' must have shape [batch, 1], got {list(array.shape)}")
    if array.shape[0] != batch:
        raise RequestError(f"'{name}' has {array.shape[0]} rows but 'image' has {batch}")
    return list(array[:, 0])


def concat_batches(batches: Sequence[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[int]]:
    """Requests of one dynamic batch -> one batch; returns the row count of each request."""
    sizes = [len(next(iter(batch.values()))) for batch in batches]
    names = batches[0].keys()
    return {name: np.concatenate([batch[name] for batch in batches]) for name in names}, sizes


def split_rows(array: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    return np.split(array, np.cumsum(sizes)[:-1])


TOKEN_INPUTS = ("input_ids", "decoder_input_ids")


def trim_padding(batch: dict[str, np.ndarray], pad_token_id: int) -> dict[str, np.ndarray]:
    """Cut the token columns that are padding in every row. Preprocessing pads to a fixed
    length so that Triton can batch any requests; the graph takes any length, and trailing
    padding changes no score (masked in the encoder, after the last position in the causal
    decoder), so the encoder-decoder need not compute it."""
    trimmed = dict(batch)
    for name in TOKEN_INPUTS:
        ids = batch[name]
        used = np.flatnonzero((ids != pad_token_id).any(axis=0))
        width = int(used[-1]) + 1 if used.size else 1
        trimmed[name] = np.ascontiguousarray(ids[:, :width])
    return trimmed


def require_cuda(session_providers: Sequence[str], device_id: int) -> None:
    """onnxruntime falls back to the CPU, with only a log line, when the CUDA provider cannot
    start (CUDA or cuDNN libraries missing or of another major version). A KIND_GPU instance
    that silently computes on the CPU is worse than one that fails to load."""
    if "CUDAExecutionProvider" not in session_providers:
        raise RuntimeError(
            f"onnxruntime could not start its CUDA provider on GPU {device_id} and would run "
            f"on the CPU (session providers: {list(session_providers)}): the CUDA and cuDNN "
            "libraries onnxruntime-gpu was built for are missing. Install "
            "'onnxruntime-gpu[cuda,cudnn]' (make bench-gpu does), or use the NGC Triton image "
            "(docker-compose.yml); onnxruntime.print_debug_info() lists what it looked for")


class EncoderDecoderSession:
    """The exported scorer in onnxruntime, on the device Triton gave this model instance."""

    def __init__(self, graph: str | Path, *, instance_kind: str = "CPU", device_id: int = 0,
                 intra_op_threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        # No busy-waiting between operators: on a CPU host the preprocessing stubs need
        # those cycles.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        gpu = instance_kind.upper() == "GPU"
        if gpu:
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise RuntimeError(
                    "this instance is KIND_GPU but onnxruntime has no CUDAExecutionProvider "
                    f"(available: {available}); install onnxruntime-gpu or export with "
                    "--device cpu")
            if hasattr(ort, "preload_dlls"):   # onnxruntime-gpu >= 1.21
                # CUDA and cuDNN from the nvidia-* wheels of onnxruntime-gpu[cuda,cudnn],
                # where they are installed; system libraries are found as usual.
                ort.preload_dlls()
            providers = [("CUDAExecutionProvider", {"device_id": device_id}),
                         "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(graph), options, providers=providers)
        self.providers = self.session.get_providers()
        if gpu:
            require_cuda(self.providers, device_id)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        (answer_scores,) = self.session.run(["answer_scores"],
                                            {name: batch[name] for name in self.input_names})
        return answer_scores
