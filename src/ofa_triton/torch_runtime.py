"""The PyTorch runtime of the encoder-decoder step (``ofa-triton export --runtime torch``).

It runs this project's plain-PyTorch module, loaded from the version directory, on the device
Triton gave the model instance: ``cuda:<device_id>`` for KIND_GPU, the CPU for KIND_CPU.

Version directory (written by ``write_torch_model``, listed with sha256 in the manifest):

    model.safetensors      the weights, in the export precision (fp32, fp16 or bf16)
    ofa_architecture.json  the architecture (config.json's fields) the module is built from

How it is fast on a GPU:
- attention is ``scaled_dot_product_attention`` (modeling/layers.py): the fused kernel takes
  OFA's additive position bias;
- CUDA graphs: for each batch-size bucket (``cuda_graph_batch_sizes``) the whole forward is
  captured once at load, into one memory pool, on static input buffers at the fixed padded
  token lengths; a batch is copied into the smallest bucket that holds it (rows beyond it are
  left over from earlier batches and ignored: rows never mix) and the graph is replayed. No
  allocation and no kernel launch from Python on that path;
- pinned host buffers and one stream per instance for the copies in and out;
- ``torch.compile`` is available (``torch_compile``) but off by default: it compiles each
  bucket's shape separately, minutes for OFA-large, and its gain over the captured graphs has
  to be measured first (BENCHMARKS.md).
On the CPU (CI, and KIND_CPU instances) it runs eagerly, with the padding trimmed per batch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .modeling import OfaArchitecture, OfaVisualEntailmentModel
from .modeling.model import OfaModel
from .runtime import TORCH_COMPILE_MODES, trim_padding
from .settings import ServingSettings
from .tensor_names import DECODER_INPUT_IDS, INPUT_IDS, PATCH_IMAGES

WEIGHTS_FILE = "model.safetensors"
ARCHITECTURE_FILE = "ofa_architecture.json"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INPUT_NAMES = OfaVisualEntailmentModel.INPUT_NAMES
# Buffers that the module builds from its architecture (relative-position bucket tables).
DERIVED_BUFFERS = ("image_rp_bucket", "token_rp_bucket", "image_position_idx")


def write_torch_model(model: OfaModel, directory: Path, precision: str) -> None:
    """The module's weights in ``precision`` and its architecture, into ``directory``."""
    import copy

    if precision not in DTYPES:
        raise ValueError(f"the torch runtime takes precision {sorted(DTYPES)}, not {precision!r}")
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    converted = copy.deepcopy(model).to(DTYPES[precision])
    state, stored = {}, set()
    for name, tensor in converted.state_dict().items():
        # Each tied tensor once (the shared token embedding); the bucket tables are rebuilt
        # from the architecture at load (tens of MB of int64 that the checkpoint repeats).
        if tensor.data_ptr() in stored or name.rsplit(".", 1)[-1] in DERIVED_BUFFERS:
            continue
        stored.add(tensor.data_ptr())
        state[name] = tensor.contiguous()
    path = directory / WEIGHTS_FILE
    save_file(state, str(path), metadata={"precision": precision})
    path.chmod(0o644)   # the server may run as another user (the container's triton-server)
    (directory / ARCHITECTURE_FILE).write_text(json.dumps(model.arch.to_dict(), indent=2) + "\n")


def instance_device(instance_kind: str, device_id: int, threads: int = 0,
                    device: str = "") -> torch.device:
    """The device of a Triton model instance: ``cuda:<device_id>`` for KIND_GPU (or an explicit
    ``device``, whatever the kind), else the CPU with ``threads`` threads (0: torch's default)."""
    if device.startswith("cuda"):
        instance_kind, device_id = "GPU", torch.device(device).index or 0
    if instance_kind.upper() == "GPU":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"this instance is KIND_GPU but torch {torch.__version__} sees no CUDA device "
                "(a CPU build of torch, or no driver in this container); install a CUDA build "
                "of torch or export with --device cpu")
        chosen = torch.device("cuda", device_id)
        torch.cuda.set_device(chosen)
        return chosen
    if threads:
        torch.set_num_threads(threads)
    return torch.device("cpu")


def read_architecture(directory: Path) -> OfaArchitecture:
    return OfaArchitecture.from_config_dict(
        json.loads((Path(directory) / ARCHITECTURE_FILE).read_text()))


def load_weights(model: OfaModel, directory: Path, device: torch.device | str = "cpu") -> OfaModel:
    """``model`` (any of the tasks' modules, built from ``read_architecture``) with the weights
    of ``directory``, on ``device``, in the precision they were exported in."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as handle:
        precision = (handle.metadata() or {}).get("precision", "fp32")
    state = load_file(str(path))
    for name, buffer in model.state_dict().items():
        if name.rsplit(".", 1)[-1] in DERIVED_BUFFERS:
            state.setdefault(name, buffer)
    model.load_checkpoint(state)
    model.to(device=device, dtype=DTYPES[precision])
    model.requires_grad_(False)
    return model.eval()


def load_torch_model(directory: Path, device: torch.device | str = "cpu") -> OfaVisualEntailmentModel:
    """Visual entailment's scorer from ``directory`` (its answers' token ids from the
    settings there)."""
    model = OfaVisualEntailmentModel(read_architecture(directory),
                                     ServingSettings.read(directory).answer_token_ids)
    return load_weights(model, directory, device)


@dataclasses.dataclass
class _CapturedBatch:
    """One bucket's CUDA graph and the buffers it reads and writes."""

    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]         # on the GPU, fixed shapes
    staging: dict[str, torch.Tensor]        # pinned host copies of the inputs
    output: torch.Tensor                    # on the GPU
    output_host: torch.Tensor               # pinned


class TorchEncoderDecoder:
    """The encoder-decoder as a callable: ``scores = runtime(batch)`` (numpy in, numpy out)."""

    def __init__(self, version_dir: Path, *, instance_kind: str = "CPU", device_id: int = 0,
                 threads: int = 0, cuda_graph_batch_sizes: Sequence[int] = (),
                 compile_mode: str = "none", device: str = ""):
        version_dir = Path(version_dir)
        self.settings = ServingSettings.read(version_dir)
        self.device = instance_device(instance_kind, device_id, threads, device)
        if compile_mode not in TORCH_COMPILE_MODES:
            raise ValueError(f"torch_compile must be one of {TORCH_COMPILE_MODES}, not "
                             f"{compile_mode!r}")
        self.model = load_torch_model(version_dir, self.device)
        self.precision = next(name for name, dtype in DTYPES.items()
                              if dtype == self.model.encoder.image_proj.weight.dtype)
        self.forward = self.model if compile_mode == "none" else torch.compile(
            self.model, mode=None if compile_mode == "default" else compile_mode, dynamic=False)
        self.compile_mode = compile_mode
        self.graphs: dict[int, _CapturedBatch] = {}
        if self.device.type == "cuda":
            self.stream = torch.cuda.Stream(self.device)
            if cuda_graph_batch_sizes:
                self._capture(cuda_graph_batch_sizes)

    @property
    def description(self) -> str:
        graphs = ",".join(map(str, sorted(self.graphs))) or "none"
        return (f"torch {torch.__version__} on {self.device}, {self.precision}, "
                f"CUDA graphs for batches {graphs}, compile {self.compile_mode}")

    # -- shapes -----------------------------------------------------------------------------

    def _static_shapes(self, rows: int) -> dict[str, tuple[int, ...]]:
        task = self.settings.task
        side = task.patch_image_size
        return {INPUT_IDS: (rows, task.source_length),
                PATCH_IMAGES: (rows, 3, side, side),
                DECODER_INPUT_IDS: (rows, task.decoder_length)}

    def _fits_graphs(self, batch: dict[str, np.ndarray]) -> bool:
        rows = len(batch[INPUT_IDS])
        return bool(self.graphs) and rows <= max(self.graphs) and all(
            batch[name].shape[1:] == shape[1:]
            for name, shape in self._static_shapes(rows).items())

    # -- CUDA graphs ------------------------------------------------------------------------

    def _blank_inputs(self, rows: int, device: torch.device, pin: bool = False) -> dict:
        pad = self.settings.pad_token_id
        tensors = {}
        for name, shape in self._static_shapes(rows).items():
            if name == PATCH_IMAGES:
                tensors[name] = torch.zeros(shape, dtype=torch.float32, device=device)
            else:
                tensors[name] = torch.full(shape, pad, dtype=torch.int64, device=device)
        return {name: t.pin_memory() for name, t in tensors.items()} if pin else tensors

    def _capture(self, batch_sizes: Sequence[int]) -> None:
        pool = torch.cuda.graph_pool_handle()
        # Largest first: the smaller graphs reuse the pool's blocks.
        for rows in sorted(batch_sizes, reverse=True):
            inputs = self._blank_inputs(rows, self.device)
            with torch.inference_mode(), torch.cuda.stream(self.stream):
                for _ in range(2):   # lazy initialization (cuBLAS handles, kernel choice)
                    self.forward(**inputs)
                self.stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=self.stream):
                    output = self.forward(**inputs)
            self.graphs[rows] = _CapturedBatch(
                graph, inputs, self._blank_inputs(rows, torch.device("cpu"), pin=True),
                output, torch.empty(output.shape, dtype=output.dtype).pin_memory())
        torch.cuda.synchronize(self.device)

    def _replay(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        rows = len(batch[INPUT_IDS])
        captured = self.graphs[min(size for size in self.graphs if size >= rows)]
        with torch.cuda.stream(self.stream):
            for name in INPUT_NAMES:
                staging = captured.staging[name][:rows]
                staging.numpy()[...] = batch[name]
                captured.inputs[name][:rows].copy_(staging, non_blocking=True)
            captured.graph.replay()
            captured.output_host[:rows].copy_(captured.output[:rows], non_blocking=True)
        self.stream.synchronize()
        return captured.output_host[:rows].numpy().copy()

    # -- eager ------------------------------------------------------------------------------

    def _eager(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        batch = trim_padding(batch, self.settings.pad_token_id)
        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.cuda.stream(self.stream):
                    inputs = {name: torch.from_numpy(batch[name]).pin_memory().to(
                        self.device, non_blocking=True) for name in INPUT_NAMES}
                    scores = self.forward(**inputs).float().cpu()
            else:
                scores = self.forward(**{name: torch.from_numpy(batch[name])
                                         for name in INPUT_NAMES})
        return scores.float().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        if self._fits_graphs(batch):
            return self._replay(batch)
        return self._eager(batch)


def validate_torch_model(reference: OfaVisualEntailmentModel, directory: Path, precision: str,
                         inputs: Sequence[dict[str, np.ndarray]]) -> dict:
    """Load ``directory`` as a server would and compare it with the fp32 ``reference`` on
    ``inputs``; raise if they differ by more than the precision's tolerance (the same as the
    ONNX graph's). Both run on the GPU when there is one (fp16 is a GPU precision, and OFA-large
    in fp32 takes seconds per sample on a CPU); the reference goes back to the CPU after."""
    import time

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    model = load_torch_model(directory, device)
    worst = 0.0
    try:
        reference.to(device)
        with torch.inference_mode():
            for batch in inputs:
                tensors = [torch.from_numpy(batch[name]).to(device) for name in INPUT_NAMES]
                expected, got = reference(*tensors), model(*tensors)
                if got.shape != expected.shape:   # before the values: it could broadcast
                    from .onnx_export import ExportValidationError

                    raise ExportValidationError(
                        f"the {precision} PyTorch weights score shape {list(got.shape)}, the "
                        f"fp32 module {list(expected.shape)}; do not serve them")
                worst = max(worst, float((got.float() - expected.float()).abs().max()))
    finally:
        reference.to("cpu")
        del model
    return validation_report(worst, precision, device, started, "PyTorch weights",
                             batches=[len(b[INPUT_IDS]) for b in inputs])


def validation_report(worst: float, precision: str, device: torch.device, started: float,
                      what: str, **figures) -> dict:
    """The export record's validation figures of weights for the PyTorch runtime; raises when
    ``worst`` (the largest log-probability difference to the fp32 module) is over the
    precision's tolerance."""
    import time

    from .onnx_export import VALIDATION_TOLERANCE, ExportValidationError

    tolerance = VALIDATION_TOLERANCE[precision]
    if not worst <= tolerance:
        raise ExportValidationError(
            f"the {precision} {what} differ from the fp32 module by {worst:.3g} in "
            f"log-probability (tolerance {tolerance}); do not serve them")
    return {"precision": precision, "runtime": "torch", "device": str(device),
            "torch": torch.__version__, **figures, "max_abs_diff_log_prob": worst,
            "tolerance": tolerance, "seconds": round(time.perf_counter() - started, 3)}
