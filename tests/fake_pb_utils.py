"""A stand-in for ``triton_python_backend_utils`` (pb_utils), which exists only inside Triton's
Python stub, so that the Triton Python models' ``initialize()`` and ``execute()`` run in a plain
test process (as tensorrtllm_backend's all_models/tests/test_python_backend.py does with a
MagicMock, but with real behaviour instead of mocks).

It follows python_backend's pybind classes (src/pb_stub.cc, src/pb_tensor.cc) and its Python
helpers (src/resources/triton_python_backend_utils.py) where the models' behaviour depends on
them:

- ``Tensor(name, array)``: refuses an empty name and a dtype Triton has no type for, makes the
  array C-contiguous, and serializes TYPE_STRING (object/bytes) arrays as the stub does
  (``serialize_byte_tensor``: ``bytes`` elements as they are, anything else through ``str()``);
  ``wire()`` (not in pb_utils) is what the client receives;
- ``InferenceResponse(output_tensors=[], error=None)``, ``has_error()``, ``error()``,
  ``output_tensors()``; ``TritonError(message, code=TritonError.INTERNAL)``, ``message()``,
  ``code()``, with the TRITONSERVER_Error_Code values;
- ``InferenceRequest(inputs=[...], requested_output_names=[...], model_name=...)`` and the
  module functions ``get_input_tensor_by_name`` (None when absent) and friends;
- ``Logger.log_info`` / ``log_warn`` / ``log_error`` / ``log_verbose`` record into
  ``Logger.records`` so that tests can read the model's log.

``install()`` puts the module in ``sys.modules["triton_python_backend_utils"]``;
``check_responses`` checks what Triton itself checks of what ``execute()`` returns.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Mapping, Sequence

import numpy as np

MODULE_NAME = "triton_python_backend_utils"

TRITON_STRING_TO_NUMPY = {
    "TYPE_BOOL": bool, "TYPE_UINT8": np.uint8, "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32, "TYPE_UINT64": np.uint64, "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16, "TYPE_FP32": np.float32, "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}
# TRITONSERVER_DataType values, as numpy_to_triton_type returns them.
_TRITON_TYPES = {np.dtype(np.bool_): 1, np.dtype(np.uint8): 2, np.dtype(np.uint16): 3,
                 np.dtype(np.uint32): 4, np.dtype(np.uint64): 5, np.dtype(np.int8): 6,
                 np.dtype(np.int16): 7, np.dtype(np.int32): 8, np.dtype(np.int64): 9,
                 np.dtype(np.float16): 10, np.dtype(np.float32): 11, np.dtype(np.float64): 12}
TYPE_BYTES = 13


class TritonModelException(Exception):
    """python_backend's PythonBackendException, as Python sees it."""


def numpy_to_triton_type(data_type) -> int | None:
    dtype = np.dtype(data_type)
    if dtype == np.object_ or dtype.type == np.bytes_:
        return TYPE_BYTES
    return _TRITON_TYPES.get(dtype)


def triton_to_numpy_type(data_type: int):
    if data_type == TYPE_BYTES:
        return np.object_
    return next((dtype.type for dtype, value in _TRITON_TYPES.items() if value == data_type),
                None)


def triton_string_to_numpy(triton_type_string: str):
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def serialize_byte_tensor(input_tensor: np.ndarray):
    """python_backend's serialize_byte_tensor, byte for byte."""
    if input_tensor.size == 0:
        return ()
    if input_tensor.dtype == np.object_ or input_tensor.dtype.type == np.bytes_:
        flattened = []
        for obj in np.nditer(input_tensor, flags=["refs_ok"], order="C"):
            if input_tensor.dtype == np.object_:
                item = obj.item()
                value = item if type(item) == bytes else str(item).encode("utf-8")  # noqa: E721
            else:
                value = obj.item()
            flattened.append(struct.pack("<I", len(value)))
            flattened.append(value)
        return b"".join(flattened)
    return None


def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
    values, offset = [], 0
    while offset < len(encoded_tensor):
        (length,) = struct.unpack_from("<I", encoded_tensor, offset)
        offset += 4
        values.append(encoded_tensor[offset:offset + length])
        offset += length
    return np.array(values, dtype=np.object_)


class Tensor:
    def __init__(self, name: str, numpy_array):
        if not isinstance(name, str):
            raise TypeError(f"Tensor(): name must be str, got {type(name).__name__}")
        if name == "":
            raise TritonModelException("Tensor name cannot be an empty string.")
        array = np.asarray(numpy_array)          # pybind11's py::array converts array-likes
        self._triton_dtype = numpy_to_triton_type(array.dtype)
        if self._triton_dtype is None:
            raise TritonModelException(f"NumPy dtype {array.dtype} is not supported.")
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        self._name, self._array = name, array
        self._serialized = (serialize_byte_tensor(array) if self._triton_dtype == TYPE_BYTES
                            else None)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def triton_dtype(self) -> int:
        return self._triton_dtype

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return True

    def wire(self) -> np.ndarray:
        """Not in pb_utils: the tensor as the client receives it (TYPE_STRING elements as the
        stub serialized them)."""
        if self._triton_dtype != TYPE_BYTES:
            return self._array
        if self._serialized == ():
            return np.empty(self._array.shape, dtype=np.object_)
        return deserialize_bytes_tensor(self._serialized).reshape(self._array.shape)

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, {self._array.dtype}, {list(self._array.shape)})"


class TritonError:
    # TRITONSERVER_Error_Code
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG = 0, 1, 2, 3
    UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = 4, 5, 6, 7

    def __init__(self, message: str, code: int = 1):
        if not isinstance(message, str):
            raise TypeError(f"TritonError(): message must be str, got {type(message).__name__}")
        if code not in range(8):
            raise TypeError(f"TritonError(): unknown error code {code!r}")
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, code={self._code})"


class InferenceRequest:
    def __init__(self, request_id: str = "", correlation_id=0, inputs: Sequence[Tensor] = (),
                 requested_output_names: Sequence[str] = (), model_name: str = "",
                 model_version: int = -1, flags: int = 0, timeout: int = 0, **_unused):
        if any(not isinstance(tensor, Tensor) for tensor in inputs):
            raise TypeError("InferenceRequest(): inputs must be pb_utils.Tensor objects")
        self._id, self._correlation_id = request_id, correlation_id
        self._inputs = list(inputs)
        self._requested = list(requested_output_names)
        self._model_name, self._model_version = model_name, model_version
        self._flags, self._timeout = flags, timeout

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._id

    def correlation_id(self):
        return self._correlation_id

    def requested_output_names(self) -> list[str]:
        return self._requested

    def flags(self) -> int:
        return self._flags

    def timeout(self) -> int:
        return self._timeout

    def is_cancelled(self) -> bool:
        return False

    def get_response_sender(self):
        raise TritonModelException("this fake serves non-decoupled models only")


class InferenceResponse:
    def __init__(self, output_tensors: Sequence[Tensor] = (), error: TritonError | None = None,
                 parameters=None):
        # pybind11 converts the arguments or raises TypeError, as these checks do.
        if any(not isinstance(tensor, Tensor) for tensor in output_tensors):
            raise TypeError("InferenceResponse(): output_tensors must be pb_utils.Tensor "
                            f"objects, got {[type(t).__name__ for t in output_tensors]}")
        if error is not None and not isinstance(error, TritonError):
            raise TypeError(f"InferenceResponse(): error must be a pb_utils.TritonError, got "
                            f"{type(error).__name__}")
        self._tensors, self._error, self._parameters = list(output_tensors), error, parameters

    def output_tensors(self) -> list[Tensor]:
        return self._tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self):
        return self._parameters


class Logger:
    INFO, WARNING, ERROR, VERBOSE = "INFO", "WARNING", "ERROR", "VERBOSE"
    records: list[tuple[str, str]] = []

    @classmethod
    def log(cls, message: str, level: str = "INFO") -> None:
        cls.records.append((level, message))

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.log(message, cls.INFO)

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls.log(message, cls.WARNING)

    @classmethod
    def log_error(cls, message: str) -> None:
        cls.log(message, cls.ERROR)

    @classmethod
    def log_verbose(cls, message: str) -> None:
        cls.log(message, cls.VERBOSE)

    @classmethod
    def messages(cls, level: str) -> list[str]:
        return [message for kind, message in cls.records if kind == level]


def get_input_tensor_by_name(inference_request, name):
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response, name):
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config, name):
    return next((t for t in model_config.get("input", ()) if t["name"] == name), None)


def get_output_config_by_name(model_config, name):
    return next((t for t in model_config.get("output", ()) if t["name"] == name), None)


def using_decoupled_model_transaction_policy(model_config) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


# --- test helpers (not in pb_utils) -----------------------------------------------------------

def install():
    """This module as ``triton_python_backend_utils``; returns it."""
    module = sys.modules[__name__]
    sys.modules[MODULE_NAME] = module
    return module


def request(**inputs) -> InferenceRequest:
    """A request as the stub hands it to execute(): one Tensor per input; ``None`` leaves the
    input out. TYPE_STRING inputs arrive as object arrays of ``bytes``."""
    return InferenceRequest(inputs=[Tensor(name, value) for name, value in inputs.items()
                                    if value is not None],
                            requested_output_names=[], model_name="test")


def check_responses(model_config: Mapping, requests: Sequence, responses) -> None:
    """What the Python backend and Triton check of execute()'s result: a list with one
    InferenceResponse per request; and, of each answered one, that its outputs are the config's
    (names, datatypes, [rows of its request] + dims)."""
    assert isinstance(responses, list), type(responses)
    assert len(responses) == len(requests), (len(responses), len(requests))
    outputs = {t["name"]: t for t in model_config["output"]}
    for request_, response in zip(requests, responses):
        assert isinstance(response, InferenceResponse), type(response)
        if response.has_error():
            assert response.output_tensors() == []
            continue
        rows = request_.inputs()[0].as_numpy().shape[0]
        tensors = {t.name(): t for t in response.output_tensors()}
        assert sorted(tensors) == sorted(outputs), (sorted(tensors), sorted(outputs))
        for name, tensor in tensors.items():
            config = outputs[name]
            expected_type = numpy_to_triton_type(TRITON_STRING_TO_NUMPY[config["data_type"]])
            assert tensor.triton_dtype() == expected_type, (name, tensor)
            assert tensor.shape() == [rows] + [int(d) for d in config["dims"]], (name, tensor)
