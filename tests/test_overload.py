"""Overload protection: a burst beyond capacity is refused fast, with a clear error, and the
latency of the requests that are served stays bounded."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ofa_triton.client import PredictionError
from ofa_triton.tasks.visual_entailment.client import VisualEntailmentClient
from ofa_triton.export import export_repository
from ofa_triton.triton_config import ServingOptions
from tests.conftest import start_triton


@pytest.fixture(scope="module")
def small_queue_server(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("overload")
    options = ServingOptions(max_batch_size=2, preprocess_instances=1, max_queue_size=2,
                             queue_delay_us=0)
    export_repository(tiny_checkpoint, root / "repository", options=options,
                      progress=lambda _: None)
    with start_triton(root / "repository", root) as server:
        server.wait_ready()
        yield server


def test_burst_beyond_capacity_is_refused_quickly(small_queue_server, golden_images):
    client = VisualEntailmentClient(small_queue_server.grpc_url, "grpc")
    image = golden_images["photo_1280x960.jpg"].read_bytes()

    def one(index):
        started = time.perf_counter()
        try:
            client.predict(image, f"burst request {index}")
            return "ok", time.perf_counter() - started, None
        except PredictionError as error:
            return "refused", time.perf_counter() - started, error

    with ThreadPoolExecutor(48) as pool:
        outcomes = list(pool.map(one, range(48)))
    served = [o for o in outcomes if o[0] == "ok"]
    refused = [o for o in outcomes if o[0] == "refused"]
    assert served and refused, f"{len(served)} served, {len(refused)} refused"
    for _, seconds, error in refused:
        assert error.status == "StatusCode.UNAVAILABLE", (error.status, str(error))
        assert "queue" in str(error).lower()
        assert seconds < 5
    # Bounded queues bound the wait: nobody waits behind more than a few batches.
    assert max(seconds for _, seconds, _ in served) < 30
    assert VisualEntailmentClient(small_queue_server.http_url).predict(image, "after the burst")


def test_configs_carry_the_queue_policy(small_queue_server):
    config = (small_queue_server.options.repository / "ofa_preprocess" / "config.pbtxt").read_text()
    assert "max_queue_size: 2" in config and "timeout_action: REJECT" in config
