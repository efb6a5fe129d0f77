"""The client call of ``ofa_visual_grounding``, over HTTP or gRPC (tritonclient).

    client = VisualGroundingClient("localhost:8000")           # or protocol="grpc", :8001
    client.ground("photo.jpg", "the man on the left")          # -> (x0, y0, x1, y1) in pixels
    client.ground_many([{"image": ..., "text": ...}, ...])     # many requests in flight
    await client.aground(...)                                  # asyncio

The image may be a path, an http(s) URL, a ``data:`` URL, base64 text or bytes
(``ofa_triton.client.read_image``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import VisualGrounding
from ...client import PredictionError, TritonClient, read_image, string_inputs

MODEL_NAME = VisualGrounding.public_model

Box = tuple[float, float, float, float]


def build_inputs(module, image: bytes, text: str) -> list:
    return string_inputs(module, {"image": image, "text": text.encode("utf-8")})


def parse_result(result) -> Box:
    x0, y0, x1, y1 = (float(v) for v in result.as_numpy("box")[0])
    return x0, y0, x1, y1


class VisualGroundingClient(TritonClient):
    def __init__(self, url: str | None = None, protocol: str = "http",
                 model_name: str = MODEL_NAME, timeout: float = 60.0):
        super().__init__(url, protocol, model_name, timeout)

    def ground(self, image: str | bytes | Path, text: str) -> Box:
        data = read_image(image)
        return parse_result(self.infer(lambda m: build_inputs(m, data, text)))

    async def aground(self, image: str | bytes | Path, text: str, *, _client=None) -> Box:
        data = read_image(image)
        return parse_result(await self.ainfer(lambda m: build_inputs(m, data, text), _client))

    async def aground_many(self, requests: Iterable[dict[str, Any]], concurrency: int = 16,
                           return_exceptions: bool = False) -> list[Box | Exception]:
        """Up to ``concurrency`` requests in flight on one connection pool; results in order."""
        return await self.in_flight(requests, lambda r, client: self.aground(
            r["image"], r["text"], _client=client), concurrency, return_exceptions)

    def ground_many(self, requests: Sequence[dict[str, Any]], concurrency: int = 16,
                    return_exceptions: bool = False) -> list[Box | Exception]:
        return asyncio.run(self.aground_many(requests, concurrency, return_exceptions))


__all__ = ["Box", "PredictionError", "VisualGroundingClient", "build_inputs", "parse_result"]
