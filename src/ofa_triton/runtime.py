"""The encoder-decoder's runtimes, for the Triton Python models and the exporter: pure
functions and small classes, testable without a server.

- ``trim_padding``: drop the token columns that are padding in the whole batch;
- ``EncoderDecoderSession``: the onnxruntime session on the instance's device
  (``require_cuda``: a GPU instance never falls back to the CPU silently);
- ``RuntimeRecord``, ``RuntimeParameters``: which runtime a version was exported for, and the
  config's tunables;
- ``open_encoder_decoder``: the runtime a version directory was exported for (onnxruntime, or
  the PyTorch runtime of ``torch_runtime.py``), with the config's parameters.

The requests and responses of the Triton models are ``triton_requests.py``'s.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .tensor_names import ANSWER_SCORES, TOKEN_INPUTS

def trim_padding(batch: dict[str, np.ndarray], pad_token_id: int) -> dict[str, np.ndarray]:
    """Cut the token columns that are padding in every row. Preprocessing pads to a fixed
    length so that Triton can batch any requests; the graph takes any length, and trailing
    padding changes no score (masked in the encoder, after the last position in the causal
    decoder), so the encoder-decoder need not compute it."""
    trimmed = dict(batch)
    for name in TOKEN_INPUTS:
        if name not in batch:
            continue
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


def session_options(intra_op_threads: int = 0):
    """onnxruntime's options for a serving session: every graph optimization, ``threads``
    (0: one per core), and no busy-waiting between operators: on a CPU host the
    preprocessing stubs need those cycles."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class EncoderDecoderSession:
    """The exported scorer in onnxruntime, on the device Triton gave this model instance.
    Called with a batch padded to the configs' fixed lengths; trims the padding itself when
    ``pad_token_id`` is given."""

    def __init__(self, graph: str | Path, *, instance_kind: str = "CPU", device_id: int = 0,
                 intra_op_threads: int = 0, pad_token_id: int | None = None):
        import onnxruntime as ort

        options = session_options(intra_op_threads)
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
        self.pad_token_id = pad_token_id

    @property
    def description(self) -> str:
        return f"onnxruntime, providers {self.providers}"

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        if self.pad_token_id is not None:
            batch = trim_padding(batch, self.pad_token_id)
        (answer_scores,) = self.session.run([ANSWER_SCORES],
                                            {name: batch[name] for name in self.input_names})
        return answer_scores


# Which runtime a version directory was exported for, and in which precision. Exports made
# before the PyTorch runtime have no such file: they hold model.onnx for onnxruntime.
RUNTIME_FILE = "ofa_runtime.json"
RUNTIMES = ("onnxruntime", "torch")
# The precisions each runtime serves (export --precision).
RUNTIME_PRECISIONS = {"onnxruntime": ("fp32", "fp16", "int8"), "torch": ("fp32", "fp16", "bf16")}
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
GRAPH_FILE = "model.onnx"


@dataclasses.dataclass(frozen=True)
class RuntimeRecord:
    runtime: str = "onnxruntime"
    precision: str = "fp32"

    def write(self, directory: Path) -> None:
        (Path(directory) / RUNTIME_FILE).write_text(json.dumps(dataclasses.asdict(self)) + "\n")

    @classmethod
    def read(cls, directory: Path) -> "RuntimeRecord":
        path = Path(directory) / RUNTIME_FILE
        record = cls(**json.loads(path.read_text())) if path.is_file() else cls()
        if record.runtime not in RUNTIMES:
            raise ValueError(f"{path}: unknown runtime {record.runtime!r} (this ofa-triton "
                             f"knows {RUNTIMES}); upgrade ofa-triton or re-export")
        return record


TORCH_COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune-no-cudagraphs")


def parse_batch_sizes(text: str, max_batch_size: int) -> tuple[int, ...]:
    """"1,2,4,8" -> (1, 2, 4, 8); "" -> (); the largest must cover max_batch_size."""
    try:
        sizes = tuple(sorted({int(part) for part in text.replace(" ", "").split(",") if part}))
    except ValueError:
        raise ValueError(f"cuda_graph_batch_sizes {text!r}: give comma-separated batch sizes, "
                         "for example 1,2,4,8,16,32") from None
    if sizes and (sizes[0] < 1 or sizes[-1] < max_batch_size):
        raise ValueError(f"cuda_graph_batch_sizes {text!r}: sizes must be >= 1 and the largest "
                         f"at least max_batch_size ({max_batch_size})")
    return sizes


@dataclasses.dataclass(frozen=True)
class RuntimeParameters:
    """The encoder-decoder's tunables in its config.pbtxt ``parameters`` (set at export,
    editable without re-exporting)."""

    intra_op_threads: int = 0               # CPU threads per instance; 0: the library's default
    cuda_graph_batch_sizes: str = ""        # torch on a GPU: batch buckets captured at load
    torch_compile: str = "none"             # torch: torch.compile mode, or none
    # torch: this device whatever the instance kind (e.g. "cuda:0" for a KIND_CPU instance,
    # where a tritonserver cannot place KIND_GPU instances); "": the instance's device.
    torch_device: str = ""

    @classmethod
    def from_model_config(cls, config: Mapping) -> "RuntimeParameters":
        given = {key: value.get("string_value", "")
                 for key, value in config.get("parameters", {}).items()}
        defaults = cls()
        return cls(intra_op_threads=int(given.get("intra_op_threads") or 0),
                   cuda_graph_batch_sizes=given.get("cuda_graph_batch_sizes",
                                                    defaults.cuda_graph_batch_sizes),
                   torch_compile=given.get("torch_compile") or defaults.torch_compile,
                   torch_device=given.get("torch_device", defaults.torch_device))


EncoderDecoder = Callable[[dict[str, np.ndarray]], np.ndarray]


def open_encoder_decoder(version_dir: Path, *, instance_kind: str = "CPU", device_id: int = 0,
                         parameters: RuntimeParameters = RuntimeParameters(),
                         max_batch_size: int = 0) -> EncoderDecoder:
    """The runtime ``version_dir`` was exported for, on the instance's device. Called with
    batches padded to the configs' fixed lengths; returns answer scores [rows, answers]."""
    from .settings import ServingSettings

    version_dir = Path(version_dir)
    record = RuntimeRecord.read(version_dir)
    if record.runtime == "torch":
        from .torch_runtime import TorchEncoderDecoder

        return TorchEncoderDecoder(
            version_dir, instance_kind=instance_kind, device_id=device_id,
            threads=parameters.intra_op_threads,
            cuda_graph_batch_sizes=parse_batch_sizes(parameters.cuda_graph_batch_sizes,
                                                     max_batch_size),
            compile_mode=parameters.torch_compile, device=parameters.torch_device)
    return EncoderDecoderSession(
        version_dir / GRAPH_FILE, instance_kind=instance_kind, device_id=device_id,
        intra_op_threads=parameters.intra_op_threads,
        pad_token_id=ServingSettings.read(version_dir).pad_token_id)
