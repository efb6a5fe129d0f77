"""What every Triton Python model's ``execute()`` does with its requests: read the inputs, run
the package, write the outputs, and turn failures into per-request errors. Pure functions,
testable without a server (``pb_utils``, the backend's triton_python_backend_utils, is passed
in, so that this module imports without it).

- ``RequestError``: a problem with one request, reported to its client as INVALID_ARG;
- ``text_from_bytes`` / ``rows`` / ``input_array``: input tensors, with clear errors;
- ``concat_batches`` / ``split_rows``: merge the requests of a dynamic batch and split back;
- ``respond_each`` / ``respond_batched``: one response per request, errors per request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .tensor_names import TOKEN_INPUTS


class RequestError(ValueError):
    """The request is invalid; the message tells the client what to fix."""


def text_from_bytes(value: object, name: str) -> str:
    """One TYPE_STRING element (bytes) as UTF-8 text."""
    if isinstance(value, str):
        return value
    if not isinstance(value, (bytes, bytearray, np.bytes_)):
        raise RequestError(f"'{name}' must be a string, got {type(value).__name__}")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(f"'{name}' is not valid UTF-8 (byte {error.start})") from None


def rows(array: np.ndarray | None, name: str, batch: int) -> list[object]:
    """A [batch, 1] TYPE_STRING tensor as a list of its elements."""
    if array is None:
        return [None] * batch
    if array.ndim != 2 or array.shape[1] != 1:
        raise RequestError(f"'{name}' must have shape [batch, 1], got {list(array.shape)}")
    if array.shape[0] != batch:
        raise RequestError(f"'{name}' has {array.shape[0]} rows but 'image' has {batch}")
    return list(array[:, 0])


def concat_batches(batches: Sequence[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[int]]:
    """Requests of one dynamic batch -> one batch; returns the row count of each request."""
    sizes = [len(next(iter(batch.values()))) for batch in batches]
    names = batches[0].keys()
    return {name: np.concatenate([batch[name] for batch in batches]) for name in names}, sizes


def split_rows(array: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    return np.split(array, np.cumsum(sizes)[:-1])


FAULT_HINT = (" (not a problem this service found in the request: the server log has the "
              "traceback; report it with that log)")


def _request_error(pb_utils, error: RequestError):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(
        str(error), pb_utils.TritonError.INVALID_ARG))


def _fault(pb_utils, error: Exception, what: str):
    """An unexpected failure: its traceback to the server log, and an internal error that says
    where to look."""
    import traceback

    pb_utils.Logger.log_error(f"{what} failed:\n" + "".join(
        traceback.format_exception(type(error), error, error.__traceback__)))
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(
        f"{what} failed: {type(error).__name__}: {error}{FAULT_HINT}"))


def respond_each(pb_utils, requests: Sequence, handle: Callable, what: str) -> list:
    """Requests handled one by one (``handle(request) -> {output name: array}``): a bad one
    (RequestError) gets its own INVALID_ARG error, any other failure its own internal error,
    and the other requests of the dynamic batch are answered normally."""
    responses = []
    for request in requests:
        try:
            outputs = handle(request)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, value) for name, value in outputs.items()]))
        except RequestError as error:
            responses.append(_request_error(pb_utils, error))
        except Exception as error:  # never let one request fail the batch
            responses.append(_fault(pb_utils, error, what))
    return responses


def input_array(pb_utils, request, name: str) -> np.ndarray:
    """One input of a request as numpy; a missing one is the request's error (Triton refuses
    requests without a required input before the model sees them; this covers the rest)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise RequestError(f"the request has no '{name}' input")
    return tensor.as_numpy()


def _model_inputs(pb_utils, request, inputs: Sequence[str]) -> dict[str, np.ndarray]:
    arrays = {name: input_array(pb_utils, request, name) for name in inputs}
    for name in TOKEN_INPUTS:
        # The embedding lookup would read a negative id from the end of the table.
        if name in arrays and arrays[name].size and arrays[name].min() < 0:
            raise RequestError(f"'{name}' holds a negative token id ({arrays[name].min()})")
    return arrays


def respond_batched(pb_utils, requests: Sequence, inputs: Sequence[str], compute: Callable,
                    what: str) -> list:
    """All requests of a dynamic batch as one batch: ``compute({input: [rows, ...]}) ->
    {output name: [rows, ...]}``, split back per request. A request whose inputs are missing or
    invalid gets its own INVALID_ARG error. If the batch fails, each request is computed alone,
    so that only the one that fails gets the error (a direct request to this model, batched
    with the ensemble's, can hold what no preprocessing made); never an escaped exception."""
    responses: list = [None] * len(requests)
    batches = {}
    for index, request in enumerate(requests):
        try:
            batches[index] = _model_inputs(pb_utils, request, inputs)
        except RequestError as error:
            responses[index] = _request_error(pb_utils, error)

    def answer(indices: Sequence[int]) -> None:
        batch, sizes = concat_batches([batches[i] for i in indices])
        outputs = {name: split_rows(np.ascontiguousarray(value), sizes)
                   for name, value in compute(batch).items()}
        for position, index in enumerate(indices):
            responses[index] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, parts[position]) for name, parts in outputs.items()])

    groups = [list(batches)] if batches else []
    while groups:
        group = groups.pop()
        try:
            answer(group)
        except Exception as error:
            if len(group) > 1:
                groups.extend([index] for index in group)
            else:
                responses[group[0]] = _fault(pb_utils, error, what)
    return responses
