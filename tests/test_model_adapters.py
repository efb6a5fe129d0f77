"""The Triton Python models' ``initialize()`` and ``execute()`` in this process, with a stand-in
for triton_python_backend_utils (tests/fake_pb_utils.py), as tensorrtllm_backend's
all_models/tests/test_python_backend.py tests its model.py: fast, no server.

Every ``model_repository/<task>/<model>/1/model.py`` is imported by file path and initialized
from the built-in tiny repository (``ofa_triton.builtin``), with the ``args`` Triton passes, so
the package code under the adapters is the real one (onnxruntime included). What is checked:

- a request that is bad gets its own error response (message and code), the others of its
  dynamic batch their normal answers, in order, one response per request (the models that
  answer request by request: pre- and postprocessing); the batched models (encoder-decoder,
  generators) fail the whole batch, on purpose (``runtime.respond_batched``);
- an unexpected exception inside the package becomes error responses, never an exception out
  of ``execute()``;
- ``initialize()`` refuses, with a clear error, what it can detect cheaply.

The same bad inputs through a real server: tests/test_bad_inputs.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import io
import itertools
import json
import re
import shutil
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2

from ofa_triton.limits import DEFAULT_MAX_TEXT_CHARS
from ofa_triton.settings import ServingSettings
from ofa_triton.synthetic import photo_like
from ofa_triton.triton_requests import FAULT_HINT
from tests import fake_pb_utils as pb

TEMPLATES = Path(__file__).resolve().parents[1] / "model_repository"

# Every Python model of the repository: its template folder (task) and its execute()'s
# ``what`` (the prefix of an unexpected failure's message).
ADAPTERS = {
    "ofa_preprocess": ("visual_entailment", "preprocessing"),
    "ofa_encoder_decoder": ("visual_entailment", "encoder-decoder"),
    "ofa_postprocess": ("visual_entailment", "postprocessing"),
    "ofa_caption_preprocess": ("image_captioning", "preprocessing"),
    "ofa_caption_generator": ("image_captioning", "generation"),
    "ofa_caption_postprocess": ("image_captioning", "postprocessing"),
    "ofa_vqa_preprocess": ("visual_question_answering", "preprocessing"),
    "ofa_vqa_generator": ("visual_question_answering", "generation"),
    "ofa_vqa_postprocess": ("visual_question_answering", "postprocessing"),
    "ofa_grounding_preprocess": ("visual_grounding", "preprocessing"),
    "ofa_grounding_generator": ("visual_grounding", "generation"),
    "ofa_grounding_postprocess": ("visual_grounding", "postprocessing"),
}
PREPROCESS = ("ofa_preprocess", "ofa_caption_preprocess", "ofa_vqa_preprocess",
              "ofa_grounding_preprocess")
BATCHED = ("ofa_encoder_decoder", "ofa_caption_generator", "ofa_vqa_generator",
           "ofa_grounding_generator")
POSTPROCESS = ("ofa_postprocess", "ofa_caption_postprocess", "ofa_vqa_postprocess",
               "ofa_grounding_postprocess")
GENERATORS = BATCHED[1:]

INVALID_ARG, INTERNAL = pb.TritonError.INVALID_ARG, pb.TritonError.INTERNAL
# A missing input (Triton refuses requests without a required input before a model sees them;
# a direct call can still lack one) is the request's error.
MISSING = "the request has no '{}' input"


# --- loading the adapters as Triton does -------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def pb_utils():
    """The fake as ``triton_python_backend_utils`` while this module's tests run; the shared
    adapters (tasks/triton_preprocess.py, generation/triton_model.py) bind it at import."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, pb.MODULE_NAME, pb)
        for name in ("ofa_triton.tasks.triton_preprocess", "ofa_triton.generation.triton_model"):
            patch.setattr(importlib.import_module(name), "pb_utils", pb)
        yield pb


@pytest.fixture(autouse=True)
def fresh_log():
    pb.Logger.records.clear()
    yield
    pb.Logger.records.clear()


def load_adapter(name: str) -> types.ModuleType:
    """``model_repository/<task>/<name>/1/model.py``, imported by path as the stub does."""
    task, _ = ADAPTERS[name]
    path = TEMPLATES / task / name / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(f"ofa_adapter_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_config(model_dir: Path) -> dict:
    """config.pbtxt as the Python backend passes it to initialize(): protobuf JSON."""
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def triton_args(model_dir: Path, kind: str = "CPU") -> dict[str, str]:
    """The ``args`` Triton gives initialize() (model_repository: the model's own folder)."""
    return {"model_config": json.dumps(model_config(model_dir)), "model_instance_kind": kind,
            "model_instance_name": f"{model_dir.name}_0_0", "model_instance_device_id": "0",
            "model_repository": str(model_dir), "model_version": "1",
            "model_name": model_dir.name}


def initialized(name: str, model_dir: Path, kind: str = "CPU"):
    module = load_adapter(name)
    model = module.TritonPythonModel()
    model.initialize(triton_args(model_dir, kind))
    return module, model


@dataclasses.dataclass
class Served:
    name: str
    module: types.ModuleType
    model: object
    config: dict
    version_dir: Path
    what: str

    def execute(self, requests: list) -> list:
        """execute(), and what Triton checks of its result (fake_pb_utils.check_responses)."""
        responses = self.model.execute(requests)
        pb.check_responses(self.config, requests, responses)
        return responses

    def answer(self, inputs: dict) -> dict[str, np.ndarray]:
        """One request alone: its outputs as the client receives them."""
        (response,) = self.execute([pb.request(**inputs)])
        return answered(response)


@pytest.fixture(scope="module")
def repository(tmp_path_factory, pb_utils) -> Path:
    """The built-in repository: every task's tiny checkpoint exported (about 20 s)."""
    from ofa_triton.builtin import build_builtin_repository

    root = tmp_path_factory.mktemp("adapters")
    return build_builtin_repository(root / "repository", root / "checkpoints",
                                    progress=lambda _: None)


@pytest.fixture(scope="module")
def served(repository) -> dict[str, Served]:
    """Every Python model, initialized once (warmup included) for the execute() tests."""
    models = {}
    for name, (_, what) in ADAPTERS.items():
        module, model = initialized(name, repository / name)
        models[name] = Served(name, module, model, model_config(repository / name),
                              repository / name / "1", what)
    return models


def test_every_model_py_of_the_repository_is_covered():
    found = {path.parents[1].name for path in TEMPLATES.glob("*/*/1/model.py")}
    assert found == set(ADAPTERS)


# --- requests and responses --------------------------------------------------------------------

def strings(*values: bytes) -> np.ndarray:
    """A TYPE_STRING input of shape [rows, 1], as the stub delivers it (bytes elements)."""
    return np.array(values, dtype=np.object_).reshape(len(values), 1)


def jpeg(seed: int, width: int = 96, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo_like(width, height, seed)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


IMAGE_1, IMAGE_2 = jpeg(1), jpeg(2, 80, 120)


def answered(response) -> dict[str, np.ndarray]:
    assert not response.has_error(), response.error()
    return {tensor.name(): tensor.wire() for tensor in response.output_tensors()}


def assert_same_answer(response, expected: dict[str, np.ndarray]) -> None:
    outputs = answered(response)
    assert outputs.keys() == expected.keys()
    for name, value in expected.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(outputs[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(outputs[name], value, err_msg=name)


def assert_refused(response, code: int, message: str | re.Pattern) -> None:
    assert response.has_error(), "answered, not refused"
    error = response.error()
    if isinstance(message, re.Pattern):
        assert message.fullmatch(error.message()), error.message()
    else:   # an unexpected failure says where to look (the traceback is in the server log)
        assert error.message() == message + (FAULT_HINT if code == INTERNAL else "")
    assert error.code() == code, (error.code(), error.message())


def different(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return any(not np.array_equal(a[name], b[name]) for name in a)


# Two good requests per model (different answers, so that order shows), made from the model's
# warmup sample where the inputs are another model's outputs.

def warmup_sample(model: Served) -> dict[str, np.ndarray]:
    from ofa_triton.warmup import read_warmup_sample

    return read_warmup_sample(model.config, model.version_dir)


def good_requests(model: Served) -> tuple[dict, dict]:
    name = model.name
    if name == "ofa_preprocess":
        return (dict(image=strings(IMAGE_1), hypothesis=strings(b"a dog runs"),
                     premise=strings(b"an animal")),
                dict(image=strings(IMAGE_2), hypothesis=strings(b"two people walk"),
                     premise=None))
    if name in PREPROCESS:
        text = {"ofa_vqa_preprocess": "question", "ofa_grounding_preprocess": "text"}.get(name)
        texts = ({} if text is None else {text: strings(b"what is the man holding?")},
                 {} if text is None else {text: strings(b"the red ball on the left")})
        return dict(image=strings(IMAGE_1), **texts[0]), dict(image=strings(IMAGE_2), **texts[1])
    sample = warmup_sample(model)
    other = dict(sample)
    if name in BATCHED:
        other["patch_images"] = np.ascontiguousarray(sample["patch_images"][..., ::-1])
    elif name == "ofa_postprocess":
        other["answer_scores"] = np.log(np.array([[0.7, 0.2, 0.1]], dtype=np.float32))
    elif name == "ofa_grounding_postprocess":
        other["image_size"] = np.array([[320, 200]], dtype=np.int64)
    else:                                   # caption, VQA: another first word
        other["tokens"] = sample["tokens"].copy()
        other["tokens"][0, 0] = 500
    return sample, other


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_good_requests_are_answered_each_in_its_place(served, name):
    model = served[name]
    first, second = good_requests(model)
    alone = [model.answer(first), model.answer(second)]
    assert different(*alone)
    responses = model.execute([pb.request(**first), pb.request(**second),
                               pb.request(**second)])
    for response, expected in zip(responses, alone + alone[1:]):
        assert_same_answer(response, expected)


def test_a_batched_models_multi_row_request_gets_its_rows_back(served):
    """respond_batched splits the batch's outputs back by each request's row count."""
    for name in BATCHED:
        model = served[name]
        first, second = good_requests(model)
        both = {key: np.concatenate([first[key], second[key]]) for key in first}
        alone = [model.answer(first), model.answer(second)]
        responses = model.execute([pb.request(**second), pb.request(**both)])
        assert_same_answer(responses[0], alone[1])
        assert_same_answer(responses[1], {key: np.concatenate([alone[0][key], alone[1][key]])
                                          for key in alone[0]})


def test_an_absent_premise_is_an_empty_one(served):
    model = served["ofa_preprocess"]
    request = dict(image=strings(IMAGE_1), hypothesis=strings(b"a dog runs"))
    absent = model.answer(request)
    assert_same_answer(model.execute([pb.request(**request, premise=strings(b""))])[0], absent)
    assert different(absent, model.answer({**request, "premise": strings(b"an animal")}))


def test_string_outputs_reach_the_client_as_the_packages_text(served):
    """TYPE_STRING outputs go through the stub's serialize_byte_tensor, which passes ``bytes``
    elements as they are but writes anything else as ``str(element)`` (b'...' for np.bytes_)."""
    from ofa_triton.tasks.image_captioning import caption_text
    from ofa_triton.tasks.visual_entailment.labels import scores_to_outputs
    from ofa_triton.tasks.visual_question_answering import answer_text

    entailment = served["ofa_postprocess"]
    scores = good_requests(entailment)[1]["answer_scores"]
    (label,), _, _ = scores_to_outputs(scores, entailment.model.answers)
    assert entailment.answer({"answer_scores": scores})["label"].tolist() == [[label.encode()]]
    caption = served["ofa_caption_postprocess"]
    tokens = good_requests(caption)[0]["tokens"]
    text = caption_text(caption.model.text, tokens[0].tolist())
    assert text and caption.answer({"tokens": tokens})["caption"].tolist() == [[text.encode()]]
    vqa = served["ofa_vqa_postprocess"]
    inputs = good_requests(vqa)[0]
    text = answer_text(vqa.model.text, inputs["tokens"][0].tolist(), (), -1)
    assert text and vqa.answer(inputs)["answer"].tolist() == [[text.encode()]]


# --- one bad request among good ones: models that answer request by request ---------------------

@dataclasses.dataclass(frozen=True)
class Bad:
    model: str
    label: str
    make: Callable[[dict], dict]        # the first good request -> the bad one
    code: int
    message: str | re.Pattern           # {formats}: the export's accepted image formats

    def __str__(self):
        return f"{self.model}-{self.label}"


def _replace(**changes) -> Callable[[dict], dict]:
    return lambda good: {**good, **changes}


TRUNCATED = jpeg(3, 320, 240)[:4000]
OVER_LIMIT = b"a" * (DEFAULT_MAX_TEXT_CHARS + 1)
REQUIRED_TEXT = {"ofa_preprocess": ("hypothesis", "the sentence to check against the image"),
                 "ofa_vqa_preprocess": ("question", "the question to answer about the image"),
                 "ofa_grounding_preprocess": ("text", "the description of the region to find")}


def _preprocess_cases() -> list[Bad]:
    cases = []
    for model in PREPROCESS:
        cases += [
            Bad(model, "text instead of an image", _replace(image=strings(b"a photo of a dog\n")),
                INVALID_ARG, "could not decode the image: its 17 bytes are not an image in an "
                "accepted format ({formats}; --image-formats); it is text (send the image "
                "file's bytes, not its name or URL)"),
            Bad(model, "empty image", _replace(image=strings(b"")), INVALID_ARG,
                "the image is empty (0 bytes)"),
            Bad(model, "truncated image", _replace(image=strings(TRUNCATED)), INVALID_ARG,
                re.compile(r"could not decode the image \(4,000 bytes\): OSError: image file is "
                           r"truncated.*")),
            Bad(model, "image of shape [1]", _replace(image=np.array([IMAGE_1], dtype=object)),
                INVALID_ARG, "'image' must have shape [batch, 1], got [1]"),
            Bad(model, "image of shape [1, 2]", _replace(image=strings(IMAGE_1, IMAGE_1)
                                                         .reshape(1, 2)),
                INVALID_ARG, "'image' must have shape [batch, 1], got [1, 2]"),
            Bad(model, "no image", _replace(image=None), INVALID_ARG, MISSING.format("image")),
        ]
        texts = [REQUIRED_TEXT[model][0]] if model in REQUIRED_TEXT else []
        if model == "ofa_preprocess":
            texts.append("premise")
        for text in texts:
            cases += [
                Bad(model, f"{text} not UTF-8", _replace(**{text: strings(b"a \xff dog")}),
                    INVALID_ARG, f"'{text}' is not valid UTF-8 (byte 2)"),
                Bad(model, f"{text} of TYPE_INT64", _replace(**{text: np.array([[7]])}),
                    INVALID_ARG, f"'{text}' must be a string, got int64"),
                Bad(model, f"{text} with 2 rows", _replace(**{text: strings(b"a", b"b")}),
                    INVALID_ARG, f"'{text}' has 2 rows but 'image' has 1"),
                Bad(model, f"{text} over the limit", _replace(**{text: strings(OVER_LIMIT)}),
                    INVALID_ARG, f"'{text}' is {len(OVER_LIMIT):,} characters long, over the "
                    f"limit of {DEFAULT_MAX_TEXT_CHARS:,} characters (--max-text-chars)"),
            ]
        if model in REQUIRED_TEXT:
            text, what = REQUIRED_TEXT[model]
            cases += [
                Bad(model, f"blank {text}", _replace(**{text: strings(b" \t\n ")}), INVALID_ARG,
                    f"'{text}' is empty (or only whitespace); send {what}"),
                Bad(model, f"empty {text}", _replace(**{text: strings(b"")}), INVALID_ARG,
                    f"'{text}' is empty (or only whitespace); send {what}"),
                Bad(model, f"no {text}", _replace(**{text: None}), INVALID_ARG,
                    MISSING.format(text)),
            ]
    return cases


def _tokens_with(position: int, value: int) -> Callable[[dict], dict]:
    def make(good):
        tokens = good["tokens"].copy()
        tokens[0, position] = value
        return {**good, "tokens": tokens}
    return make


POSTPROCESS_CASES = [
    Bad("ofa_postprocess", "no answer_scores", _replace(answer_scores=None), INVALID_ARG, MISSING.format("answer_scores")),
    Bad("ofa_postprocess", "2 answer scores", _replace(answer_scores=np.zeros((1, 2), np.float32)),
        INTERNAL, "postprocessing failed: IndexError: index 2 is out of bounds for axis 1 with "
        "size 2"),
    Bad("ofa_caption_postprocess", "no tokens", _replace(tokens=None), INVALID_ARG, MISSING.format("tokens")),
    Bad("ofa_caption_postprocess", "a token outside the vocabulary", _tokens_with(0, 10 ** 6),
        INTERNAL, re.compile(r"postprocessing failed: TypeError: .+")),
    Bad("ofa_vqa_postprocess", "no answer_index", _replace(answer_index=None), INVALID_ARG, MISSING.format("answer_index")),
    Bad("ofa_vqa_postprocess", "an answer index without an answer list",
        _replace(answer_index=np.array([[3]])), INTERNAL,
        "postprocessing failed: IndexError: tuple index out of range"),
    Bad("ofa_grounding_postprocess", "no image_size", _replace(image_size=None), INVALID_ARG, MISSING.format("image_size")),
    Bad("ofa_grounding_postprocess", "eos after 2 bins", _tokens_with(2, 2), INTERNAL,
        "postprocessing failed: ValueError: the model generated 2 tokens where a box needs 4 "
        "(the checkpoint's beam_search must generate exactly 4: min_len and max_len_b 4)"),
    Bad("ofa_grounding_postprocess", "an image 0 pixels wide",
        _replace(image_size=np.array([[0, 480]])), INTERNAL,
        "postprocessing failed: ZeroDivisionError: division by zero"),
]
PER_REQUEST_CASES = _preprocess_cases() + POSTPROCESS_CASES


@pytest.mark.parametrize("case", PER_REQUEST_CASES, ids=str)
def test_a_bad_request_gets_its_own_error_and_the_others_their_answers(served, case):
    model = served[case.model]
    first, second = good_requests(model)
    alone = [model.answer(first), model.answer(second)]
    requests = [pb.request(**first), pb.request(**case.make(first)), pb.request(**second)]
    responses = model.execute(requests)
    assert_same_answer(responses[0], alone[0])
    assert_same_answer(responses[2], alone[1])
    message = case.message
    if isinstance(message, str):
        formats = ServingSettings.read(model.version_dir).limits.image_formats
        message = message.replace("{formats}", ", ".join(formats))
    assert_refused(responses[1], case.code, message)
    # and the model still answers afterwards
    assert_same_answer(model.execute([pb.request(**second)])[0], alone[1])


def test_every_bad_request_of_a_batch_gets_its_own_error(served):
    """Several bad requests, each with its own message, between good ones."""
    model = served["ofa_vqa_preprocess"]
    first, second = good_requests(model)
    requests = [dict(first, question=strings(b"")), first, dict(first, image=strings(b"")),
                second, dict(second, question=strings(b"\xc3\x28"))]
    responses = model.execute([pb.request(**inputs) for inputs in requests])
    assert_refused(responses[0], INVALID_ARG, "'question' is empty (or only whitespace); send "
                   "the question to answer about the image")
    assert_same_answer(responses[1], model.answer(first))
    assert_refused(responses[2], INVALID_ARG, "the image is empty (0 bytes)")
    assert_same_answer(responses[3], model.answer(second))
    assert_refused(responses[4], INVALID_ARG, "'question' is not valid UTF-8 (byte 0)")


# --- one bad request in a batched model (encoder-decoder, generators) ---------------------------

def _input_ids_with(value: int) -> Callable[[dict], dict]:
    def make(good):
        ids = good["input_ids"].copy()
        ids[0, 3] = value
        return {**good, "input_ids": ids}
    return make


BATCHED_CASES = [
    case for model in BATCHED for case in (
        Bad(model, "no patch_images", _replace(patch_images=None), INVALID_ARG,
            MISSING.format("patch_images")),
        Bad(model, "a negative token id", _input_ids_with(-5), INVALID_ARG,
            "'input_ids' holds a negative token id (-5)"),
        # Content Triton cannot check against the config: a token id outside the vocabulary.
        Bad(model, "a token id outside the vocabulary", _input_ids_with(10 ** 6), INTERNAL,
            re.compile(r"(encoder-decoder|generation) failed: InvalidArgument: "
                       r"\[ONNXRuntimeError\] : 2 : INVALID_ARGUMENT : .*indices element out of "
                       r"data bounds, idx=1000000 .*")),
    )
]


@pytest.mark.parametrize("case", BATCHED_CASES, ids=str)
def test_a_bad_request_in_a_batched_model_fails_alone(served, case):
    """respond_batched runs the dynamic batch as one call; a request with missing or negative
    inputs is refused before it, and when the call fails anyway (what no check foresaw: an id
    outside the vocabulary) each request is computed alone, so that only the one that fails
    gets the error. Through the ensemble, Triton has already checked shapes and types and the
    preprocessing made the ids; a client calling these models directly can send anything."""
    model = served[case.model]
    first, second = good_requests(model)
    alone = [model.answer(first), model.answer(second)]
    responses = model.execute([pb.request(**first), pb.request(**case.make(first)),
                               pb.request(**second)])
    assert_same_answer(responses[0], alone[0])
    assert_same_answer(responses[2], alone[1])
    message = case.message
    if isinstance(message, str):
        message = message.replace("{what}", model.what)
    assert_refused(responses[1], case.code, message)


@pytest.mark.parametrize("name", BATCHED)
def test_requests_that_cannot_share_a_batch_are_answered_apart(served, name):
    """A direct request with a shorter source than the ensemble's padded ones cannot be
    concatenated with them; each is then computed alone and every one is answered."""
    model = served[name]
    first, second = good_requests(model)
    short = {**first, "input_ids": first["input_ids"][:, :50].copy()}
    responses = model.execute([pb.request(**first), pb.request(**short),
                               pb.request(**second)])
    assert_same_answer(responses[0], model.answer(first))
    assert_same_answer(responses[1], model.answer(short))
    assert_same_answer(responses[2], model.answer(second))


# --- unexpected exceptions inside the package --------------------------------------------------

class InjectedFault(RuntimeError):
    pass


def fails_on_call(original, number: int):
    """``original``, except that its ``number``-th call raises InjectedFault."""
    calls = itertools.count(1)

    def wrapper(*args, **kwargs):
        if next(calls) == number:
            raise InjectedFault("injected fault")
        return original(*args, **kwargs)
    return wrapper


def _fault_site(model: Served):
    """(object, attribute): the package function each adapter's execute() goes through."""
    from ofa_triton.generation.runtime import Generator
    from ofa_triton.image import ImageTransform
    from ofa_triton.runtime import EncoderDecoderSession

    if model.name in PREPROCESS:
        return ImageTransform, "__call__"
    if model.name == "ofa_encoder_decoder":
        return EncoderDecoderSession, "__call__"
    if model.name in GENERATORS:
        return Generator, "__call__"
    return model.module, {"ofa_postprocess": "scores_to_outputs",
                          "ofa_caption_postprocess": "caption_text",
                          "ofa_vqa_postprocess": "answer_text",
                          "ofa_grounding_postprocess": "box_from_tokens"}[model.name]


@pytest.mark.parametrize("name", PREPROCESS + POSTPROCESS)
def test_an_unexpected_exception_fails_only_its_request(served, name, monkeypatch):
    """respond_each: anything but a RequestError becomes an INTERNAL error of that request,
    "<step> failed: <type>: <message>"; the batch's other requests are answered."""
    model = served[name]
    first, second = good_requests(model)
    alone = [model.answer(first), model.answer(second)]
    target, attribute = _fault_site(model)
    monkeypatch.setattr(target, attribute, fails_on_call(getattr(target, attribute), 2))
    responses = model.execute([pb.request(**first), pb.request(**second),
                               pb.request(**first)])
    assert_same_answer(responses[0], alone[0])
    assert_refused(responses[1], INTERNAL, f"{model.what} failed: InjectedFault: injected fault")
    assert_same_answer(responses[2], alone[0])


@pytest.mark.parametrize("name", BATCHED)
def test_an_unexpected_exception_never_escapes_a_batched_model(served, name, monkeypatch):
    """A fault of the batch's call: each request is computed alone, and answered where that
    works; a fault of every call: each request gets its own error, with the traceback in the
    server log. Nothing escapes execute()."""
    model = served[name]
    first, second = good_requests(model)
    expected = [model.answer(first), model.answer(second)]
    target, attribute = _fault_site(model)
    original = getattr(target, attribute)
    monkeypatch.setattr(target, attribute, fails_on_call(original, 1))
    responses = model.execute([pb.request(**first), pb.request(**second)])
    assert_same_answer(responses[0], expected[0])
    assert_same_answer(responses[1], expected[1])

    def always(*args, **kwargs):
        raise InjectedFault("injected fault")

    monkeypatch.setattr(target, attribute, always)
    pb.Logger.records.clear()
    responses = model.execute([pb.request(**first), pb.request(**second)])
    for response in responses:
        assert_refused(response, INTERNAL, f"{model.what} failed: InjectedFault: injected fault")
    errors = pb.Logger.messages(pb.Logger.ERROR)
    assert len(errors) == 2 and all("Traceback" in e and "InjectedFault" in e for e in errors)
    monkeypatch.setattr(target, attribute, original)
    assert_same_answer(model.execute([pb.request(**second)])[0], expected[1])


def test_a_request_error_from_deep_in_the_package_is_invalid_arg(served, monkeypatch):
    """Any RequestError raised under execute() (not only the adapters' own checks) is the
    request's fault: INVALID_ARG, its message unchanged."""
    from ofa_triton.triton_requests import RequestError

    model = served["ofa_grounding_postprocess"]
    first, second = good_requests(model)

    def refuse(*_args):
        raise RequestError("the box is off the image")

    monkeypatch.setattr(model.module, "box_from_tokens", refuse)
    for response in model.execute([pb.request(**first), pb.request(**second)]):
        assert_refused(response, INVALID_ARG, "the box is off the image")


def test_execute_with_no_requests_answers_nothing(served):
    for model in served.values():
        assert model.execute([]) == []


# --- initialize() ------------------------------------------------------------------------------

def copy_model(repository: Path, name: str, destination: Path) -> Path:
    """A copy of one model's folder to damage; files over 1 MB (graphs) are symlinked."""
    def copy(source, target):
        if Path(source).stat().st_size > 1 << 20:
            Path(target).symlink_to(source)
        else:
            shutil.copy2(source, target)

    return Path(shutil.copytree(repository / name, destination / name, copy_function=copy))


def rerecord_manifest(version_dir: Path) -> None:
    """Re-hash the artifacts, so that a damage gets past the manifest check."""
    from ofa_triton.manifest import read_manifest, write_manifest

    record = read_manifest(version_dir)
    del record["artifacts"]
    write_manifest(version_dir, record)


def test_initialize_logs_its_warmup(served, repository):
    initialized("ofa_caption_postprocess", repository / "ofa_caption_postprocess")
    (message,) = pb.Logger.messages(pb.Logger.INFO)
    assert re.fullmatch(r"ofa_caption_postprocess: warmed up in \d+ ms", message)
    assert pb.Logger.messages(pb.Logger.WARNING) == []


def test_initialize_refuses_a_version_without_its_manifest(repository, tmp_path):
    from ofa_triton.manifest import ManifestError

    version_dir = copy_model(repository, "ofa_preprocess", tmp_path) / "1"
    (version_dir / "manifest.json").unlink()
    with pytest.raises(ManifestError) as error:
        initialized("ofa_preprocess", version_dir.parent)
    assert str(error.value) == (f"refusing to load: {version_dir} has no manifest.json; "
                                "re-export it")


@pytest.mark.parametrize("name", ["ofa_postprocess", "ofa_vqa_generator"])
def test_initialize_refuses_a_version_without_its_settings_file(repository, tmp_path, name):
    from ofa_triton.manifest import ManifestError

    version_dir = copy_model(repository, name, tmp_path) / "1"
    (version_dir / "ofa_settings.json").unlink()
    with pytest.raises(ManifestError) as error:
        initialized(name, version_dir.parent)
    assert str(error.value) == f"refusing to load: {version_dir / 'ofa_settings.json'}: missing"
    # With the manifest re-recorded as well, the file's absence is what fails the load.
    rerecord_manifest(version_dir)
    with pytest.raises(FileNotFoundError, match=re.escape(str(version_dir /
                                                              "ofa_settings.json"))):
        initialized(name, version_dir.parent)


def test_initialize_refuses_artifacts_that_differ_from_the_manifest(repository, tmp_path):
    from ofa_triton.manifest import ManifestError

    version_dir = copy_model(repository, "ofa_caption_postprocess", tmp_path) / "1"
    with open(version_dir / "merges.txt", "a") as handle:
        handle.write("x y\n")
    (version_dir / "stray.bin").write_bytes(b"?")
    with pytest.raises(ManifestError) as error:
        initialized("ofa_caption_postprocess", version_dir.parent)
    assert str(error.value) == (
        f"refusing to load: {version_dir / 'merges.txt'}: sha256 differs from the manifest; "
        f"{version_dir / 'stray.bin'}: not in the manifest")


def _exported_under_other_versions(repository: Path, name: str, tmp_path: Path) -> Path:
    version_dir = copy_model(repository, name, tmp_path) / "1"
    manifest = json.loads((version_dir / "manifest.json").read_text())
    manifest["versions"]["pillow"] = "1.0.0"     # manifest.json is not one of its artifacts
    (version_dir / "manifest.json").write_text(json.dumps(manifest))
    return version_dir


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_initialize_refuses_a_version_exported_under_another_pillow(repository, tmp_path,
                                                                     monkeypatch, name):
    from importlib.metadata import version

    from ofa_triton.manifest import ALLOW_MISMATCH_ENV, ManifestError

    monkeypatch.delenv(ALLOW_MISMATCH_ENV, raising=False)
    version_dir = _exported_under_other_versions(repository, name, tmp_path)
    difference = (f"pillow {version('pillow')} here, 1.0.0 at export: image decoding and "
                  "resizing may differ")
    with pytest.raises(ManifestError) as error:
        initialized(name, version_dir.parent)
    assert str(error.value) == (
        f"refusing to load {version_dir}: it was exported under other versions of what "
        f"computes its answers: {difference}. Serve it with the versions it was exported with, "
        "or export it again here; or, once you have checked its answers here, set "
        f"{ALLOW_MISMATCH_ENV}=1 in the server's environment")
    # The operator's override: it loads, and says so in the model's log.
    monkeypatch.setenv(ALLOW_MISMATCH_ENV, "1")
    initialized(name, version_dir.parent)
    assert pb.Logger.messages(pb.Logger.WARNING) == [
        f"{name}: {version_dir}: {difference} (allowed by {ALLOW_MISMATCH_ENV}=1)"]


def test_initialize_fails_when_the_warmup_sample_is_missing(repository, tmp_path):
    from ofa_triton.warmup import WarmupError

    version_dir = copy_model(repository, "ofa_vqa_postprocess", tmp_path) / "1"
    (version_dir / "warmup" / "answer_index").unlink()
    rerecord_manifest(version_dir)
    with pytest.raises(WarmupError) as error:
        initialized("ofa_vqa_postprocess", version_dir.parent)
    assert str(error.value) == (
        "version 1 of ofa_vqa_postprocess failed its warmup sample, so it is not loaded: "
        f"FileNotFoundError: {version_dir / 'warmup' / 'answer_index'}: the warmup sample has "
        "no 'answer_index'; export the model again (ofa-triton export) to write it")


def test_initialize_fails_when_the_warmup_sample_is_refused(repository, tmp_path):
    """A version that cannot answer its own sample (here: an image it refuses) never loads."""
    from ofa_triton.warmup import WarmupError, serialize_strings

    version_dir = copy_model(repository, "ofa_grounding_preprocess", tmp_path) / "1"
    (version_dir / "warmup" / "text").write_bytes(serialize_strings([b"  "]))
    rerecord_manifest(version_dir)
    with pytest.raises(WarmupError) as error:
        initialized("ofa_grounding_preprocess", version_dir.parent)
    assert str(error.value) == (
        "version 1 of ofa_grounding_preprocess failed its warmup sample, so it is not loaded: "
        "RequestError: 'text' is empty (or only whitespace); send the description of the "
        "region to find")


@pytest.mark.parametrize("name", ["ofa_encoder_decoder", "ofa_grounding_generator"])
def test_initialize_refuses_an_unknown_runtime(repository, tmp_path, name):
    version_dir = copy_model(repository, name, tmp_path) / "1"
    (version_dir / "ofa_runtime.json").write_text('{"runtime": "tensorrt", "precision": "fp16"}')
    rerecord_manifest(version_dir)
    with pytest.raises(ValueError) as error:
        initialized(name, version_dir.parent)
    assert str(error.value) == (
        f"{version_dir / 'ofa_runtime.json'}: unknown runtime 'tensorrt' (this ofa-triton knows "
        "('onnxruntime', 'torch')); upgrade ofa-triton or re-export")


@pytest.mark.parametrize("name", GENERATORS)
def test_a_gpu_instance_of_an_onnxruntime_generator_fails_to_load(repository, name):
    with pytest.raises(RuntimeError) as error:
        initialized(name, repository / name, kind="GPU")
    assert str(error.value) == ("the generation engine's onnxruntime graphs run on the CPU; "
                                "export --runtime torch for a GPU")


def test_a_gpu_instance_of_the_encoder_decoder_needs_onnxruntimes_cuda_provider(repository):
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" in available:
        pytest.skip("this onnxruntime has a CUDA provider")
    with pytest.raises(RuntimeError) as error:
        initialized("ofa_encoder_decoder", repository / "ofa_encoder_decoder", kind="GPU")
    assert str(error.value) == (
        f"this instance is KIND_GPU but onnxruntime has no CUDAExecutionProvider (available: "
        f"{available}); install onnxruntime-gpu or export with --device cpu")
