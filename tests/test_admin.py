"""Explicit model control and the admin key: every restricted API (ofa_triton.server.
RESTRICTED_APIS) refuses a request without the key, over HTTP and gRPC, and answers one with it;
inference, health, metadata, statistics and metrics stay open."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from ofa_triton.server import RESTRICTED_APIS, admin_headers
from ofa_triton.tasks.visual_entailment.client import VisualEntailmentClient
from tests.conftest import start_triton

KEY = "s3cret-admin-key"
MODEL = "ofa_postprocess"
ENSEMBLE = "ofa_visual_entailment"

# How Triton 2.51 refuses a restricted API without (or with a wrong) key, as measured: HTTP 403
# "This API is restricted, expecting header 'admin-key'"; gRPC UNAVAILABLE (not
# PERMISSION_DENIED) "This protocol is restricted, expecting header
# 'triton-grpc-protocol-admin-key'".
REFUSED = {"http": "403", "grpc": "StatusCode.UNAVAILABLE"}
REFUSAL_MESSAGE = {"http": "This API is restricted, expecting header 'admin-key'",
                   "grpc": "This protocol is restricted, expecting header "
                           "'triton-grpc-protocol-admin-key'"}

# Triton 2.51's restricted-API categories (tritonserver --help, --http-restricted-api).
TRITON_CATEGORIES = {"health", "metadata", "inference", "shared-memory", "model-config",
                     "model-repository", "statistics", "trace", "logging"}
OPEN_CATEGORIES = {"health", "metadata", "inference", "statistics"}

# Each restricted category's calls, the same on both clients; the updates write back the
# server's defaults (verbosity 0, tracing off) or reload an unchanged model, so they change
# nothing.
RESTRICTED_CALLS = {
    "model-repository": {
        "repository index": lambda c, h: c.get_model_repository_index(headers=h),
        "load": lambda c, h: c.load_model(MODEL, headers=h),
    },
    "model-config": {
        "model config": lambda c, h: c.get_model_config(MODEL, headers=h),
    },
    "shared-memory": {
        "system shm status": lambda c, h: c.get_system_shared_memory_status(headers=h),
        "system shm unregister": lambda c, h: c.unregister_system_shared_memory(headers=h),
        "cuda shm status": lambda c, h: c.get_cuda_shared_memory_status(headers=h),
    },
    "trace": {
        "get trace settings": lambda c, h: c.get_trace_settings(headers=h),
        "get model trace settings": lambda c, h: c.get_trace_settings(model_name=MODEL,
                                                                      headers=h),
        "update trace settings": lambda c, h: c.update_trace_settings(
            settings={"trace_level": ["OFF"]}, headers=h),
    },
    "logging": {
        "get log settings": lambda c, h: c.get_log_settings(headers=h),
        "update log settings": lambda c, h: c.update_log_settings({"log_verbose_level": 0},
                                                                  headers=h),
    },
}

OPEN_CALLS = {
    "health": {
        "server live": lambda c: c.is_server_live(),
        "server ready": lambda c: c.is_server_ready(),
        "model ready": lambda c: c.is_model_ready(ENSEMBLE),
    },
    "metadata": {
        "server metadata": lambda c: c.get_server_metadata(),
        "model metadata": lambda c: c.get_model_metadata(ENSEMBLE),
    },
    "statistics": {
        "statistics": lambda c: c.get_inference_statistics(ENSEMBLE),
    },
    # inference: test_inference_stays_open
}


@pytest.fixture(scope="module")
def guarded_server(exported_repositories, tmp_path_factory):
    with start_triton(exported_repositories["tiny"], tmp_path_factory.mktemp("guarded"),
                      model_control="explicit", admin_key=KEY) as server:
        server.wait_ready()
        yield server


def client_for(server, protocol: str):
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url)
    return grpcclient.InferenceServerClient(server.grpc_url)


def test_the_restricted_and_open_apis_cover_tritons_categories():
    restricted = set(RESTRICTED_APIS.split(","))
    assert restricted == set(RESTRICTED_CALLS)
    assert restricted | OPEN_CATEGORIES == TRITON_CATEGORIES
    assert not restricted & OPEN_CATEGORIES
    assert set(OPEN_CALLS) | {"inference"} == OPEN_CATEGORIES


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("api", sorted(RESTRICTED_CALLS))
def test_restricted_api_needs_the_admin_key(guarded_server, api, protocol):
    client = client_for(guarded_server, protocol)
    # No key, a wrong key, and (gRPC) the HTTP header name, which Triton does not accept there.
    refused_headers = [None, admin_headers(protocol, "wrong")]
    if protocol == "grpc":
        refused_headers.append(admin_headers("http", KEY))
    for name, call in RESTRICTED_CALLS[api].items():
        for headers in refused_headers:
            with pytest.raises(InferenceServerException) as refused:
                call(client, headers)
            assert refused.value.status() == REFUSED[protocol], (name, headers)
            assert REFUSAL_MESSAGE[protocol] in refused.value.message(), (name, headers)
        call(client, admin_headers(protocol, KEY))   # raises if refused
    assert client.is_model_ready(MODEL)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_log_verbosity_changes_only_with_the_key(guarded_server, protocol):
    """The issue: an unauthenticated POST /v2/logging {"log_verbose_level": 1} returned 200."""
    key = admin_headers(protocol, KEY)
    client = client_for(guarded_server, protocol)

    def verbosity() -> int:
        if protocol == "http":
            return client.get_log_settings(headers=key)["log_verbose_level"]
        return client.get_log_settings(headers=key).settings["log_verbose_level"].uint32_param

    if protocol == "http":   # the request as the issue sent it
        request = urllib.request.Request(
            f"http://{guarded_server.http_url}/v2/logging", method="POST",
            data=json.dumps({"log_verbose_level": 1}).encode(),
            headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
    with pytest.raises(InferenceServerException, match="restricted"):
        client.update_log_settings({"log_verbose_level": 1})
    assert verbosity() == 0
    try:
        client.update_log_settings({"log_verbose_level": 1}, headers=key)
        assert verbosity() == 1
    finally:
        client.update_log_settings({"log_verbose_level": 0}, headers=key)
    assert verbosity() == 0


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_health_metadata_and_statistics_stay_open(guarded_server, protocol):
    client = client_for(guarded_server, protocol)
    for api, calls in OPEN_CALLS.items():
        for name, call in calls.items():
            assert call(client), (api, name)


def test_inference_stays_open(guarded_server, golden_images):
    image = golden_images["photo_640x480.jpg"].read_bytes()
    for protocol, url in (("http", guarded_server.http_url), ("grpc", guarded_server.grpc_url)):
        prediction = VisualEntailmentClient(url, protocol).predict(image, "a dog runs")
        assert prediction.label in ("entailment", "contradiction", "neutral")


def test_metrics_stay_open(guarded_server):
    """The metrics port has no restriction flag: Prometheus scrapes it without a key."""
    url = f"http://127.0.0.1:{guarded_server.options.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert b"nv_inference_request_success" in response.read()


def test_serving_beyond_loopback_without_a_key_warns_which_apis_are_open(tmp_path):
    from ofa_triton.server import ServerOptions, open_admin_apis_warning

    warning = open_admin_apis_warning(ServerOptions(repository=tmp_path))   # 0.0.0.0, no key
    assert warning and "--admin-key-env" in warning and "0.0.0.0:8000" in warning
    assert all(category in warning for category in RESTRICTED_APIS.split(","))
    assert open_admin_apis_warning(ServerOptions(repository=tmp_path, admin_key=KEY)) is None
    assert open_admin_apis_warning(ServerOptions(repository=tmp_path, host="127.0.0.1")) is None
