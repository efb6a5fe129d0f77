"""FLOPs of the encoder-decoder, the machine's dense GEMM rate, and the achieved fraction.

- FLOPs per sample are counted by torch's FlopCounterMode on the PyTorch module (the graph the
  ONNX export traces), at each benchmark request's own token count.
- Cross-check: the parameter count of the built module (with OFA's real vocabulary) against
  the published figure of the architecture.
- GEMM rate: the best of repeated fp32 square matmuls in torch, on all cores.
"""

from __future__ import annotations

import time

import torch

PUBLISHED_PARAMETERS_M = {"tiny": 33, "medium": 93, "base": 180, "large": 470, "huge": 930}


REAL_VOCABULARY = 59457   # OFA's released vocabulary: BPE 50265 + 8192 codes + 1000 bins


def _flops(model, source_length: int, decoder_length: int, image_size: int) -> dict[str, int]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.full((1, source_length), 100, dtype=torch.long)
    decoder = torch.full((1, decoder_length), 100, dtype=torch.long)
    pixels = torch.zeros(1, 3, image_size, image_size)
    counter = FlopCounterMode(display=False)
    # The math attention backend: its matmuls are counted, where the CPU's fused attention
    # kernel is not (3% of the tiny model's FLOPs at 256 px went uncounted).
    with counter, torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
        model(ids, pixels, decoder)
    by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    return {"total": int(counter.get_total_flops()),
            "resnet": int(by_module.get(f"{type(model).__name__}.encoder.embed_images", 0))}


def count_flops(model, source_lengths: list[int], padded_source_length: int,
                image_size: int) -> dict:
    """FLOPs per sample: ``useful`` at each request's own token count (what the answer needs),
    ``padded`` at the fixed length preprocessing pads to (an upper bound; the encoder-decoder
    trims each batch to its longest request)."""
    useful = [_flops(model, n, n - 1, image_size) for n in source_lengths]
    padded = _flops(model, padded_source_length, padded_source_length - 1, image_size)
    arch = model.arch
    parameters = sum({id(p): p.numel() for p in model.parameters()}.values())
    # The generated checkpoints have a small synthetic vocabulary; with OFA's real one the
    # (shared) token embedding has REAL_VOCABULARY rows.
    with_real_vocabulary = parameters + (REAL_VOCABULARY - arch.vocab_size) * arch.d_model
    if not arch.share_decoder_input_output_embed:
        with_real_vocabulary += (REAL_VOCABULARY - arch.vocab_size) * arch.d_model
    return {
        "flops_per_sample": sum(f["total"] for f in useful) / len(useful),
        "resnet_flops_per_sample": useful[0]["resnet"],
        "flops_per_sample_padded": padded["total"],
        "mean_source_tokens": sum(source_lengths) / len(source_lengths),
        "padded_source_tokens": padded_source_length,
        "image_tokens": (image_size // 16) ** 2,
        "parameters": int(parameters),
        "parameters_with_real_vocabulary": int(with_real_vocabulary),
    }


def measure_gemm_flops(size: int = 2048, repeats: int = 10, device: str = "cpu",
                       dtype: torch.dtype = torch.float32) -> dict:
    """The best of ``repeats`` square ``size`` matmuls: the machine's dense GEMM rate (on a
    GPU, timed with CUDA events after warm-up, in the serving precision)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(3):   # warm up (on a GPU also the clocks)
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        if device == "cpu":
            start = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - start)
        else:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            torch.matmul(a, b)
            end.record()
            end.synchronize()
            best = min(best, begin.elapsed_time(end) / 1e3)
    return {"size": size, "device": device, "dtype": str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(), "best_seconds": best,
            "flops_per_second": 2 * size ** 3 / best}
