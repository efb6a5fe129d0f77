"""Python client of ``ofa_visual_entailment`` over HTTP or gRPC (tritonclient).

    client = VisualEntailmentClient("localhost:8000")              # or protocol="grpc", :8001
    client.predict("photo.jpg", "a dog runs", premise="an animal")  # -> Prediction
    client.predict_many([{"image": ..., "hypothesis": ...}, ...])  # many requests in flight
    await client.apredict(...)                                     # asyncio

The image may be a path, an http(s) URL, a ``data:`` URL, base64 text or bytes. The client
reads it and sends the encoded bytes: the server never fetches anything.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .labels import LABELS
from .triton_config import ENSEMBLE_MODEL

MODEL_NAME = ENSEMBLE_MODEL
PROTOCOLS = ("http", "grpc")
DEFAULT_URLS = {"http": "localhost:8000", "grpc": "localhost:8001"}
MAX_IMAGE_DOWNLOAD_BYTES = 64 * 1024 * 1024


class PredictionError(RuntimeError):
    """The server refused or failed a request; ``status`` is its HTTP status or gRPC code."""

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    probabilities: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_image(image: str | bytes | Path) -> bytes:
    """Encoded image bytes from a path, URL, data URL, base64 text or the bytes themselves."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, Path):
        return image.read_bytes()
    text = str(image)
    if text.startswith(("http://", "https://")):
        with urllib.request.urlopen(text, timeout=30) as response:
            data = response.read(MAX_IMAGE_DOWNLOAD_BYTES + 1)
        if len(data) > MAX_IMAGE_DOWNLOAD_BYTES:
            raise ValueError(f"{text} is larger than {MAX_IMAGE_DOWNLOAD_BYTES} bytes")
        return data
    if text.startswith("data:"):
        header, _, payload = text.partition(",")
        if ";base64" not in header:
            raise ValueError("only base64 data: URLs are supported")
        return base64.b64decode(payload, validate=True)
    path = Path(text).expanduser()
    if path.is_file():
        return path.read_bytes()
    try:
        if len(text) > 64:  # a path that does not exist is not mistaken for base64
            return base64.b64decode(text, validate=True)
    except binascii.Error:
        pass
    raise FileNotFoundError(f"image {text[:80]!r} is not a file, a URL, or base64 data")


def _module(protocol: str, asynchronous: bool = False):
    if protocol == "http":
        import tritonclient.http as module
        if asynchronous:
            import tritonclient.http.aio as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
        if asynchronous:
            import tritonclient.grpc.aio as module
    else:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    return module


def build_inputs(module, image: bytes, hypothesis: str, premise: str | None) -> list:
    """The request tensors; the premise is left out when absent (an optional input)."""
    tensors = {"image": image, "hypothesis": hypothesis.encode("utf-8")}
    if premise:
        tensors["premise"] = premise.encode("utf-8")
    inputs = []
    for name, value in tensors.items():
        tensor = module.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))
        inputs.append(tensor)
    return inputs


def parse_result(result) -> Prediction:
    label = result.as_numpy("label")[0, 0]
    probabilities = result.as_numpy("probabilities")[0]
    return Prediction(label=label.decode() if isinstance(label, bytes) else str(label),
                      confidence=float(result.as_numpy("confidence")[0, 0]),
                      probabilities={name: float(p) for name, p in zip(LABELS, probabilities)})


def _status(error: Exception) -> str | None:
    status = getattr(error, "status", None)
    return str(status() if callable(status) else status) if status is not None else None


class VisualEntailmentClient:
    def __init__(self, url: str | None = None, protocol: str = "http",
                 model_name: str = MODEL_NAME, timeout: float = 60.0):
        self.protocol = protocol
        self.url = url or DEFAULT_URLS[protocol]
        self.model_name = model_name
        self.timeout = timeout
        self._module = _module(protocol)
        self._client = self._module.InferenceServerClient(self.url)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "VisualEntailmentClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_model_ready(self.model_name))
        except Exception:
            return False

    def predict(self, image: str | bytes | Path, hypothesis: str,
                premise: str | None = None) -> Prediction:
        inputs = build_inputs(self._module, read_image(image), hypothesis, premise)
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        try:
            result = self._client.infer(self.model_name, inputs, **kwargs)
        except Exception as error:
            raise PredictionError(str(error), _status(error)) from error
        return parse_result(result)

    async def apredict(self, image: str | bytes | Path, hypothesis: str,
                       premise: str | None = None, *, _client=None) -> Prediction:
        module = _module(self.protocol, asynchronous=True)
        client = _client or module.InferenceServerClient(self.url)
        try:
            inputs = build_inputs(module, read_image(image), hypothesis, premise)
            try:
                result = await client.infer(self.model_name, inputs)
            except Exception as error:
                raise PredictionError(str(error), _status(error)) from error
            return parse_result(result)
        finally:
            if _client is None:
                await client.close()

    async def apredict_many(self, requests: Iterable[dict[str, Any]], concurrency: int = 16,
                            return_exceptions: bool = False) -> list[Prediction | Exception]:
        """Up to ``concurrency`` requests in flight on one connection pool; results in order."""
        module = _module(self.protocol, asynchronous=True)
        client = module.InferenceServerClient(self.url)
        limit = asyncio.Semaphore(concurrency)

        async def one(request: dict[str, Any]):
            async with limit:
                return await self.apredict(request["image"], request["hypothesis"],
                                           request.get("premise"), _client=client)
        try:
            return await asyncio.gather(*(one(r) for r in requests),
                                        return_exceptions=return_exceptions)
        finally:
            await client.close()

    def predict_many(self, requests: Sequence[dict[str, Any]], concurrency: int = 16,
                     return_exceptions: bool = False) -> list[Prediction | Exception]:
        return asyncio.run(self.apredict_many(requests, concurrency, return_exceptions))
