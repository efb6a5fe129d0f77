"""Several OFA checkpoints in one repository and one server, told apart by a name prefix."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import tritonclient.http as httpclient

from ofa_triton.tasks.visual_entailment.client import VisualEntailmentClient
from ofa_triton.export import export_repository
from ofa_triton.triton_config import ServingOptions
from tests.conftest import assert_answers_match_goldens, start_triton


@pytest.fixture(scope="module")
def two_model_server(checkpoint_dirs, tmp_path_factory):
    """The tiny checkpoint under the default names and the variant one (96 px, other
    layers) under the prefix "variant_", with its own batching settings."""
    root = tmp_path_factory.mktemp("many-models")
    repository = root / "repository"
    export_repository(checkpoint_dirs["tiny"], repository, progress=lambda _: None)
    export_repository(checkpoint_dirs["variant"], repository, progress=lambda _: None,
                      options=ServingOptions(name_prefix="variant_", max_batch_size=8,
                                             queue_delay_us=500, preprocess_instances=1))
    with start_triton(repository, root) as server:
        server.wait_ready()
        yield server


def test_the_repository_holds_both_sets_of_models(two_model_server):
    names = sorted(p.name for p in two_model_server.options.repository.iterdir())
    assert names == ["ofa_encoder_decoder", "ofa_postprocess", "ofa_preprocess",
                     "ofa_visual_entailment", "variant_ofa_encoder_decoder",
                     "variant_ofa_postprocess", "variant_ofa_preprocess",
                     "variant_ofa_visual_entailment"]
    config = httpclient.InferenceServerClient(two_model_server.http_url).get_model_config(
        "variant_ofa_visual_entailment")
    assert config["max_batch_size"] == 8
    assert [step["model_name"] for step in config["ensemble_scheduling"]["step"]] == [
        "variant_ofa_preprocess", "variant_ofa_encoder_decoder", "variant_ofa_postprocess"]


@pytest.mark.parametrize("protocol", ("http", "grpc"))
def test_both_models_answer_like_modelscope_at_once(two_model_server, goldens_by_name,
                                                    golden_images, protocol):
    url = two_model_server.http_url if protocol == "http" else two_model_server.grpc_url

    def check(model: str, checkpoint: str) -> None:
        with VisualEntailmentClient(url, protocol, model_name=model) as client:
            assert_answers_match_goldens(client, goldens_by_name[checkpoint], golden_images)

    with ThreadPoolExecutor(2) as pool:   # both models in flight together
        for future in [pool.submit(check, "ofa_visual_entailment", "tiny"),
                       pool.submit(check, "variant_ofa_visual_entailment", "variant")]:
            future.result()
