"""Explicit model control and the admin key: loads need the key, inference does not."""

from __future__ import annotations

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from ofa_triton.tasks.visual_entailment.client import VisualEntailmentClient
from ofa_triton.server import ServerOptions, TritonServer, admin_headers

KEY = "s3cret-admin-key"


@pytest.fixture(scope="module")
def guarded_server(exported_repositories, tmp_path_factory):
    options = ServerOptions.loopback(exported_repositories["tiny"], model_control="explicit",
                                     admin_key=KEY)
    server = TritonServer(options, log_path=tmp_path_factory.mktemp("guarded") / "server.log")
    with server:
        server.wait_ready()
        yield server


def test_http_load_needs_the_admin_key(guarded_server):
    client = httpclient.InferenceServerClient(guarded_server.http_url)
    with pytest.raises(InferenceServerException, match="admin-key|restricted|[Uu]nauthori|403"):
        client.load_model("ofa_postprocess")
    client.load_model("ofa_postprocess", headers=admin_headers("http", KEY))
    assert client.is_model_ready("ofa_postprocess")
    with pytest.raises(InferenceServerException):
        client.get_model_repository_index()
    assert client.get_model_repository_index(headers=admin_headers("http", KEY))


def test_grpc_load_needs_the_admin_key(guarded_server):
    client = grpcclient.InferenceServerClient(guarded_server.grpc_url)
    with pytest.raises(InferenceServerException):
        client.load_model("ofa_postprocess")
    with pytest.raises(InferenceServerException):
        client.load_model("ofa_postprocess", headers=admin_headers("grpc", "wrong"))
    client.load_model("ofa_postprocess", headers=admin_headers("grpc", KEY))


def test_inference_and_health_stay_open(guarded_server, golden_images):
    for protocol, url in (("http", guarded_server.http_url), ("grpc", guarded_server.grpc_url)):
        prediction = VisualEntailmentClient(url, protocol).predict(
            golden_images["photo_640x480.jpg"].read_bytes(), "a dog runs")
        assert prediction.label in ("entailment", "contradiction", "neutral")
    assert httpclient.InferenceServerClient(guarded_server.http_url).is_server_ready()
