"""Realistic benchmark requests: photo-like JPEGs of typical sizes with natural texts.

The one implementation is ``ofa_triton.perf`` (also behind ``ofa-triton perf-inputs``); the
benchmarks use the same requests two ways:
- ``perf_analyzer_inputs.json`` for ``perf_analyzer --input-data``: BYTES elements as
  ``{"b64": ...}`` whose content already carries each element's 4-byte little-endian length
  prefix (perf_analyzer sends b64 content as-is);
- a list of dicts for the closed-loop load generator and the baselines.
"""

from __future__ import annotations

from ofa_triton.perf_inputs import (QUESTIONS, REGIONS, TEXTS, build_requests,
                                    write_perf_analyzer_inputs)

__all__ = ["QUESTIONS", "REGIONS", "TEXTS", "build_requests", "write_perf_analyzer_inputs"]
