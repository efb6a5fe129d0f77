"""The client call of ``ofa_visual_question_answering``, over HTTP or gRPC (tritonclient).

    client = VisualQuestionAnsweringClient("localhost:8000")   # or protocol="grpc", :8001
    client.answer("photo.jpg", "what is the man holding?")      # -> "umbrella"
    client.answer_many([{"image": ..., "question": ...}, ...])  # many requests in flight
    await client.aanswer(...)                                   # asyncio

The image may be a path, an http(s) URL, a ``data:`` URL, base64 text or bytes
(``ofa_triton.client.read_image``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import VisualQuestionAnswering
from ...client import PredictionError, TritonClient, read_image, string_inputs, string_output

MODEL_NAME = VisualQuestionAnswering.public_model


def build_inputs(module, image: bytes, question: str) -> list:
    return string_inputs(module, {"image": image, "question": question.encode("utf-8")})


def parse_result(result) -> str:
    return string_output(result, "answer")


class VisualQuestionAnsweringClient(TritonClient):
    def __init__(self, url: str | None = None, protocol: str = "http",
                 model_name: str = MODEL_NAME, timeout: float = 60.0):
        super().__init__(url, protocol, model_name, timeout)

    def answer(self, image: str | bytes | Path, question: str) -> str:
        data = read_image(image)
        return parse_result(self.infer(lambda m: build_inputs(m, data, question)))

    async def aanswer(self, image: str | bytes | Path, question: str, *, _client=None) -> str:
        data = read_image(image)
        return parse_result(await self.ainfer(lambda m: build_inputs(m, data, question),
                                              _client))

    async def aanswer_many(self, requests: Iterable[dict[str, Any]], concurrency: int = 16,
                           return_exceptions: bool = False) -> list[str | Exception]:
        """Up to ``concurrency`` requests in flight on one connection pool; results in order."""
        return await self.in_flight(requests, lambda r, client: self.aanswer(
            r["image"], r["question"], _client=client), concurrency, return_exceptions)

    def answer_many(self, requests: Sequence[dict[str, Any]], concurrency: int = 16,
                    return_exceptions: bool = False) -> list[str | Exception]:
        return asyncio.run(self.aanswer_many(requests, concurrency, return_exceptions))


__all__ = ["PredictionError", "VisualQuestionAnsweringClient", "build_inputs", "parse_result"]
