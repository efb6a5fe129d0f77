"""One closed-loop load generator for every system under test.

``concurrency`` workers each send a request, wait for its answer and send the next, for
``duration`` seconds after a warm-up; every system gets the same requests in the same order.
Targets:
- ``TritonTarget``: Triton's HTTP endpoint (KServe v2, binary tensors, via tritonclient's
  asyncio client);
- ``HttpJsonTarget``: the baseline web apps, ``POST /predict`` with a JSON body.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time

import numpy as np


@dataclasses.dataclass
class LoadResult:
    concurrency: int
    duration_s: float
    completed: int
    failed: int
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    first_error: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def entailment_inputs(module, request: dict) -> list:
    from ofa_triton.tasks.visual_entailment.client import build_inputs

    return build_inputs(module, request["image"], request["hypothesis"], request["premise"])


def caption_inputs(module, request: dict) -> list:
    from ofa_triton.tasks.image_captioning.client import build_inputs

    return build_inputs(module, request["image"])


def vqa_inputs(module, request: dict) -> list:
    from ofa_triton.tasks.visual_question_answering.client import build_inputs

    return build_inputs(module, request["image"], request["question"])


def grounding_inputs(module, request: dict) -> list:
    from ofa_triton.tasks.visual_grounding.client import build_inputs

    return build_inputs(module, request["image"], request["text"])


class TritonTarget:
    """``build(module, request)``: the request's input tensors (the public model's task)."""

    def __init__(self, url: str, model: str | None = None, name: str = "triton",
                 build=entailment_inputs):
        """``model``: the public model to call; None: the default task's
        (visual entailment, ``triton_config.ENSEMBLE_MODEL``)."""
        if model is None:
            from ofa_triton.triton_config import ENSEMBLE_MODEL

            model = ENSEMBLE_MODEL
        self.url, self.model, self.name, self.build = url, model, name, build

    async def open(self):
        import tritonclient.http.aio as httpaio

        self._module = httpaio
        self._client = httpaio.InferenceServerClient(self.url, conn_limit=512)

    async def close(self):
        await self._client.close()

    async def send(self, request: dict) -> None:
        await self._client.infer(self.model, self.build(self._module, request))


class HttpJsonTarget:
    def __init__(self, name: str, url: str):
        self.name, self.url = name, url

    async def open(self):
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=512),
            timeout=aiohttp.ClientTimeout(total=600))

    async def close(self):
        await self._session.close()

    async def send(self, request: dict) -> None:
        body = {"image_b64": base64.b64encode(request["image"]).decode(),
                **{key: value for key, value in request.items() if key != "image"}}
        async with self._session.post(f"http://{self.url}/predict", json=body) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
            await response.read()


async def _run(target, requests: list[dict], concurrency: int, duration: float,
               warmup: float) -> LoadResult:
    await target.open()
    latencies: list[float] = []
    errors: list[str] = []
    failed = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration
    counter = iter(range(10 ** 9))

    async def worker():
        nonlocal failed
        while True:
            sent = time.perf_counter()
            if sent >= stop_at:
                return
            request = requests[next(counter) % len(requests)]
            try:
                await target.send(request)
                ok = True
            except Exception as error:  # counted, and the first one reported
                ok = False
                if not errors:
                    errors.append(f"{type(error).__name__}: {error}")
            done = time.perf_counter()
            if sent >= measure_from and done <= stop_at:
                if ok:
                    latencies.append(done - sent)
                else:
                    failed += 1

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await target.close()
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    return LoadResult(
        concurrency=concurrency, duration_s=duration, completed=len(latencies),
        failed=failed, throughput=len(latencies) / duration,
        p50_ms=float(np.percentile(ms, 50)), p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)), mean_ms=float(ms.mean()),
        first_error=errors[0] if errors else None)


def run_load(target, requests: list[dict], concurrency: int, duration: float,
             warmup: float = 2.0) -> LoadResult:
    return asyncio.run(_run(target, requests, concurrency, duration, warmup))
