"""The bad-input corpus (tests/bad_inputs.py) against a real tritonserver, over HTTP and gRPC:
every invalid request gets INVALID_ARG with a message naming the problem, valid edge cases get
the in-process pipeline's answer, and the stubs never crash. Mixed batches of both are in
test_serving.py."""

from __future__ import annotations

import numpy as np
import pytest

from ofa_triton.tasks.visual_entailment.client import VisualEntailmentClient
from ofa_triton.tasks.visual_entailment.labels import LABELS
from tests.bad_inputs import (INVALID_IMAGES, INVALID_TEXTS, MALFORMED_REQUESTS,
                              MULTI_FRAME_FORMATS, PROTOCOLS, VALID_EDGE_IMAGES, bytes_tensor,
                              first_frame_gif, frame_alone, infer, multi_frame, photo, refusal,
                              stub_trouble)

PROBABILITY_TOLERANCE = 1e-4


def _jpeg(width: int = 160, height: int = 120) -> bytes:
    import io

    buffer = io.BytesIO()
    photo(width, height).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def log_mark(triton_server):
    """The server log's length before this module's requests: what follows must be clean."""
    return len(triton_server.log())


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", sorted(INVALID_IMAGES))
def test_invalid_images_are_refused(triton_server, log_mark, name, protocol):
    make, fragment = INVALID_IMAGES[name]
    message = refusal(triton_server, protocol,
                      {"image": bytes_tensor(make()), "hypothesis": bytes_tensor(b"a dog")})
    assert fragment in message


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", sorted(INVALID_TEXTS))
def test_invalid_texts_are_refused(triton_server, log_mark, name, protocol):
    hypothesis, premise, fragment = INVALID_TEXTS[name]
    inputs = {"image": bytes_tensor(_jpeg()), "hypothesis": bytes_tensor(hypothesis)}
    if premise is not None:
        inputs["premise"] = bytes_tensor(premise)
    assert fragment in refusal(triton_server, protocol, inputs)


# Triton 2.51 bounds no request size (README, "The service"; src/ofa_triton/limits.py): a
# 100 MiB hypothesis, over the 64 MiB that many gRPC stacks and proxies stop at, reaches the
# model over both protocols, and only the model's own length check refuses it.
HUGE_TEXT_BYTES = 100 * 2**20


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_triton_bounds_no_request_size_so_the_model_refuses_a_100_mib_text(
        triton_server, log_mark, protocol):
    inputs = {"image": bytes_tensor(_jpeg()), "hypothesis": bytes_tensor(b"a" * HUGE_TEXT_BYTES)}
    message = refusal(triton_server, protocol, inputs)
    assert f"'hypothesis' is {HUGE_TEXT_BYTES:,} characters long" in message


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", sorted(MALFORMED_REQUESTS))
def test_malformed_requests_are_refused(triton_server, log_mark, name, protocol):
    make, fragment = MALFORMED_REQUESTS[name]
    assert fragment in refusal(triton_server, protocol, make(_jpeg()))


@pytest.fixture(scope="module")
def in_process(exported_repositories):
    """The exported tiny model run here: its preprocessor and its graph in onnxruntime."""
    import onnxruntime as ort

    from ofa_triton.tasks.visual_entailment.preprocessing import VisualEntailmentPreprocessor, stack

    repository = exported_repositories["tiny"]
    preprocessor = VisualEntailmentPreprocessor.from_directory(
        repository / "ofa_preprocess" / "1")
    session = ort.InferenceSession(str(repository / "ofa_encoder_decoder" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])

    def probabilities(image: bytes, hypothesis: str) -> np.ndarray:
        (scores,) = session.run(["answer_scores"], stack([preprocessor(image, hypothesis, None)]))
        return np.exp(scores[0].astype(np.float64))      # in the answer map's order

    return probabilities


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_valid_edge_cases_get_the_in_process_answer(triton_server, log_mark, in_process,
                                                   protocol, exported_repositories):
    """16-bit PNG, 1x1, 1000:1 and 1:1000 aspect ratios, a multi-frame file of each format
    that has one."""
    from ofa_triton.tasks.visual_entailment.labels import ANSWER_TO_LABEL
    from ofa_triton.settings import ServingSettings

    answers = ServingSettings.read(
        exported_repositories["tiny"] / "ofa_preprocess" / "1").task.answers
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    client = VisualEntailmentClient(url, protocol)
    for name, make in VALID_EDGE_IMAGES.items():
        image = make()
        served = client.predict(image, "a red square on a wall")
        expected = in_process(image, "a red square on a wall")
        for answer, probability in zip(answers, expected):
            assert abs(served.probabilities[ANSWER_TO_LABEL[answer]] - probability) \
                <= PROBABILITY_TOLERANCE, name


@pytest.mark.parametrize("fmt", MULTI_FRAME_FORMATS)
def test_a_multi_frame_file_is_answered_with_its_first_frame(triton_server, log_mark, fmt):
    """Animated GIF, WebP and PNG, multi-page TIFF, multi-picture JPEG (the pixels themselves
    are compared in test_text_and_image.py)."""
    client = VisualEntailmentClient(triton_server.grpc_url, "grpc")
    answer = client.predict(multi_frame(fmt), "a photo")
    assert answer == client.predict(frame_alone(fmt, 0), "a photo")
    assert answer != client.predict(frame_alone(fmt, 1), "a photo")   # (the frame matters)


def test_limits_set_at_export_apply_on_the_server(tiny_checkpoint, tmp_path):
    from ofa_triton.export import export_repository
    from ofa_triton.limits import InputLimits
    from ofa_triton.settings import ServingSettings
    from tests.conftest import start_triton

    # Strict, but not below the export's warmup sample (a 640x480 JPEG of 48 KB, texts of
    # 25 and 29 characters), which Triton runs through these limits when it loads the model.
    limits = InputLimits(max_image_bytes=200_000, max_image_pixels=400_000,
                         image_formats=("JPEG",), max_text_chars=32)
    record = export_repository(tiny_checkpoint, tmp_path / "repository", limits=limits,
                               progress=lambda _: None)
    assert record["settings"]["limits"]["image_formats"] == ["JPEG"]
    assert ServingSettings.read(
        tmp_path / "repository" / "ofa_preprocess" / "1").limits == limits
    with start_triton(tmp_path / "repository", tmp_path) as server:
        server.wait_ready()
        for protocol in PROTOCOLS:
            def refused(image: bytes, hypothesis: bytes = b"a dog") -> str:
                return refusal(server, protocol, {"image": bytes_tensor(image),
                                                  "hypothesis": bytes_tensor(hypothesis)})

            assert "a GIF image, a format not accepted here" in refused(first_frame_gif())
            assert "800x600 = 0.48 megapixels, over the limit of 0.4 megapixels" in refused(
                _jpeg(800, 600))
            assert "over the limit of 200,000 bytes (--max-image-bytes)" in refused(
                _jpeg() + b"\0" * 200_000)
            assert "'hypothesis' is 33 characters long, over the limit of 32" in refused(
                _jpeg(), b"a" * 33)
            answered = infer(server, protocol, {"image": bytes_tensor(_jpeg(640, 480)),
                                                "hypothesis": bytes_tensor(b"a" * 32)})
            assert answered.as_numpy("label")[0, 0].decode() in LABELS
        assert not stub_trouble(server.log())


def test_the_server_is_ready_and_its_stubs_never_restarted(triton_server, log_mark):
    """Last in this module: after all of the above."""
    import tritonclient.http as httpclient

    assert httpclient.InferenceServerClient(triton_server.http_url).is_server_ready()
    assert not stub_trouble(triton_server.log()[log_mark:])
