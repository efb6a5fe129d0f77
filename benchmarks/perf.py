"""The real perf_analyzer (shipped in tritonclient 2.50.0's wheel) against the ensemble.

It needs ``libb64.so.0d`` and ``libcudart.so.12``, which ``ofa_triton.perf`` (the one
implementation, also behind ``ofa-triton perf`` and ``ofa-triton tune``) links from the
nvidia-pytriton wheel's vendored copies (or the device kit's): no apt package and no CUDA
download. One measurement is ``ofa_triton.perf.run_perf_analyzer``.
"""

from __future__ import annotations

from ofa_triton.perf import (VENDORED, library_directory, perf_analyzer_binary,
                             perf_analyzer_environment, run_perf_analyzer)

# Re-exported: the benchmarks and the device kit import them from here.
__all__ = ["VENDORED", "library_directory", "perf_analyzer_binary", "perf_analyzer_environment",
           "run_perf_analyzer"]
