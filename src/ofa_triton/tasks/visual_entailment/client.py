"""The client call of ``ofa_visual_entailment``, over HTTP or gRPC (tritonclient).

    client = VisualEntailmentClient("localhost:8000")              # or protocol="grpc", :8001
    client.predict("photo.jpg", "a dog runs", premise="an animal")  # -> Prediction
    client.predict_many([{"image": ..., "hypothesis": ...}, ...])  # many requests in flight
    await client.apredict(...)                                     # asyncio

The image may be a path, an http(s) URL, a ``data:`` URL, base64 text or bytes
(``ofa_triton.client.read_image``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import VisualEntailment
from ...client import PredictionError, TritonClient, read_image, string_inputs
from .labels import LABELS

MODEL_NAME = VisualEntailment.public_model


@dataclasses.dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    probabilities: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_inputs(module, image: bytes, hypothesis: str, premise: str | None) -> list:
    """The request tensors; the premise is left out when absent (an optional input)."""
    tensors = {"image": image, "hypothesis": hypothesis.encode("utf-8")}
    if premise:
        tensors["premise"] = premise.encode("utf-8")
    return string_inputs(module, tensors)


def parse_result(result) -> Prediction:
    label = result.as_numpy("label")[0, 0]
    probabilities = result.as_numpy("probabilities")[0]
    return Prediction(label=label.decode() if isinstance(label, bytes) else str(label),
                      confidence=float(result.as_numpy("confidence")[0, 0]),
                      probabilities={name: float(p) for name, p in zip(LABELS, probabilities)})


class VisualEntailmentClient(TritonClient):
    def __init__(self, url: str | None = None, protocol: str = "http",
                 model_name: str = MODEL_NAME, timeout: float = 60.0):
        super().__init__(url, protocol, model_name, timeout)

    def predict(self, image: str | bytes | Path, hypothesis: str,
                premise: str | None = None) -> Prediction:
        data = read_image(image)
        return parse_result(self.infer(lambda m: build_inputs(m, data, hypothesis, premise)))

    async def apredict(self, image: str | bytes | Path, hypothesis: str,
                       premise: str | None = None, *, _client=None) -> Prediction:
        data = read_image(image)
        return parse_result(await self.ainfer(
            lambda m: build_inputs(m, data, hypothesis, premise), _client))

    async def apredict_many(self, requests: Iterable[dict[str, Any]], concurrency: int = 16,
                            return_exceptions: bool = False) -> list[Prediction | Exception]:
        """Up to ``concurrency`` requests in flight on one connection pool; results in order."""
        return await self.in_flight(
            requests, lambda r, client: self.apredict(r["image"], r["hypothesis"],
                                                      r.get("premise"), _client=client),
            concurrency, return_exceptions)

    def predict_many(self, requests: Sequence[dict[str, Any]], concurrency: int = 16,
                     return_exceptions: bool = False) -> list[Prediction | Exception]:
        return asyncio.run(self.apredict_many(requests, concurrency, return_exceptions))


__all__ = ["Prediction", "PredictionError", "VisualEntailmentClient", "build_inputs",
           "parse_result"]
