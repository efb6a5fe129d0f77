"""What every task's client shares: reading images, tritonclient over HTTP or gRPC, errors,
and many requests in flight. Each task's client call is in its folder
(``tasks/visual_entailment/client.py``: ``VisualEntailmentClient``).

The image may be a path, an http(s) URL, a ``data:`` URL, base64 text or bytes. The client
reads it and sends the encoded bytes: the server never fetches anything.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import importlib
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

PROTOCOLS = ("http", "grpc")
DEFAULT_URLS = {"http": "localhost:8000", "grpc": "localhost:8001"}
MAX_IMAGE_DOWNLOAD_BYTES = 64 * 1024 * 1024


class PredictionError(RuntimeError):
    """The server refused or failed a request; ``status`` is its HTTP status or gRPC code."""

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


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


def client_module(protocol: str, asynchronous: bool = False):
    """tritonclient's module for ``protocol`` (its asyncio flavour with ``asynchronous``)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    return importlib.import_module(f"tritonclient.{protocol}" + (".aio" if asynchronous else ""))


def _status(error: Exception) -> str | None:
    status = getattr(error, "status", None)
    return str(status() if callable(status) else status) if status is not None else None


def string_inputs(module, tensors: dict[str, bytes]) -> list:
    """One request's BYTES inputs, each of shape [1, 1]."""
    inputs = []
    for name, value in tensors.items():
        tensor = module.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))
        inputs.append(tensor)
    return inputs


def string_output(result, name: str) -> str:
    """The first element of a [1, 1] TYPE_STRING output as text."""
    value = result.as_numpy(name)[0, 0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TritonClient:
    """A connection to one public model over HTTP or gRPC; a task's client adds its call."""

    def __init__(self, url: str | None, protocol: str, model_name: str, timeout: float = 60.0):
        self.protocol = protocol
        self.url = url or DEFAULT_URLS[protocol]
        self.model_name = model_name
        self.timeout = timeout
        self._module = client_module(protocol)
        self._client = self._module.InferenceServerClient(self.url)

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_model_ready(self.model_name))
        except Exception:
            return False

    def infer(self, build: Callable[[Any], list]):
        """One request: ``build(module)`` makes its inputs; errors become PredictionError."""
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        try:
            return self._client.infer(self.model_name, build(self._module), **kwargs)
        except Exception as error:
            raise PredictionError(str(error), _status(error)) from error

    async def ainfer(self, build: Callable[[Any], list], client=None):
        """The same with tritonclient's asyncio client (``client``: a shared one)."""
        module = client_module(self.protocol, asynchronous=True)
        own = client is None
        client = client or module.InferenceServerClient(self.url)
        try:
            inputs = build(module)
            try:
                return await client.infer(self.model_name, inputs)
            except Exception as error:
                raise PredictionError(str(error), _status(error)) from error
        finally:
            if own:
                await client.close()

    async def in_flight(self, requests: Iterable[Any],
                        call: Callable[[Any, Any], Awaitable[Any]], concurrency: int,
                        return_exceptions: bool) -> list[Any]:
        """``call(request, client)`` for every request, at most ``concurrency`` in flight on
        one asyncio client; results in order."""
        module = client_module(self.protocol, asynchronous=True)
        client = module.InferenceServerClient(self.url)
        limit = asyncio.Semaphore(concurrency)

        async def one(request):
            async with limit:
                return await call(request, client)
        try:
            return await asyncio.gather(*(one(r) for r in requests),
                                        return_exceptions=return_exceptions)
        finally:
            await client.close()
