"""The client call of ``ofa_image_caption``, over HTTP or gRPC (tritonclient).

    client = ImageCaptionClient("localhost:8000")      # or protocol="grpc", :8001
    client.caption("photo.jpg")                        # -> "a man rides a horse"
    client.caption_many(["a.jpg", "b.png"])            # many requests in flight
    await client.acaption(...)                         # asyncio

The image may be a path, an http(s) URL, a ``data:`` URL, base64 text or bytes
(``ofa_triton.client.read_image``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from pathlib import Path

from . import ImageCaptioning
from ...client import PredictionError, TritonClient, read_image, string_inputs, string_output

MODEL_NAME = ImageCaptioning.public_model

Image = str | bytes | Path


def build_inputs(module, image: bytes) -> list:
    return string_inputs(module, {"image": image})


def parse_result(result) -> str:
    return string_output(result, "caption")


class ImageCaptionClient(TritonClient):
    def __init__(self, url: str | None = None, protocol: str = "http",
                 model_name: str = MODEL_NAME, timeout: float = 60.0):
        super().__init__(url, protocol, model_name, timeout)

    def caption(self, image: Image) -> str:
        data = read_image(image)
        return parse_result(self.infer(lambda m: build_inputs(m, data)))

    async def acaption(self, image: Image, *, _client=None) -> str:
        data = read_image(image)
        return parse_result(await self.ainfer(lambda m: build_inputs(m, data), _client))

    async def acaption_many(self, images: Iterable[Image], concurrency: int = 16,
                            return_exceptions: bool = False) -> list[str | Exception]:
        """Up to ``concurrency`` requests in flight on one connection pool; results in order."""
        return await self.in_flight(images, lambda image, client: self.acaption(
            image, _client=client), concurrency, return_exceptions)

    def caption_many(self, images: Sequence[Image], concurrency: int = 16,
                     return_exceptions: bool = False) -> list[str | Exception]:
        return asyncio.run(self.acaption_many(images, concurrency, return_exceptions))


__all__ = ["ImageCaptionClient", "PredictionError", "build_inputs", "parse_result"]
