"""Visual entailment, many requests in flight from synchronous code: tritonclient.http's
``async_infer`` (a pool of ``--concurrency`` connections), no asyncio needed.

Each request is one row; Triton's dynamic batching groups the requests in flight into batches
on the server. Prints one JSON line per request, in the order sent.

    make serve                                   # in another terminal
    .venv/bin/python clients/entailment_in_flight.py [--url localhost:8000] \
        [--image photo.jpg] [--requests 32] [--concurrency 8]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample.jpg"
LABELS = ("entailment", "contradiction", "neutral")   # the order of "probabilities"
HYPOTHESES = ["two people walk down a street", "a dog runs on the grass",
              "the street is empty", "someone is outside", "it is night"]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", default="localhost:8000")
parser.add_argument("--image", type=Path, default=SAMPLE)
parser.add_argument("--requests", type=int, default=32)
parser.add_argument("--concurrency", type=int, default=8)
args = parser.parse_args()

image = args.image.read_bytes()
# ``concurrency``: how many connections, so how many requests can be in flight at once.
client = httpclient.InferenceServerClient(args.url, concurrency=args.concurrency)


def string_input(name, value):
    tensor = httpclient.InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))
    return tensor


# Send everything first: async_infer returns at once with a handle...
hypotheses = [HYPOTHESES[i % len(HYPOTHESES)] for i in range(args.requests)]
pending = [client.async_infer("ofa_visual_entailment", [
    string_input("image", image), string_input("hypothesis", hypothesis.encode())])
    for hypothesis in hypotheses]

# ...then collect the answers: get_result() waits for that request.
for index, (hypothesis, request) in enumerate(zip(hypotheses, pending)):
    result = request.get_result()
    print(json.dumps({
        "index": index, "hypothesis": hypothesis, "premise": None,
        "label": result.as_numpy("label")[0, 0].decode(),
        "confidence": float(result.as_numpy("confidence")[0, 0]),
        "probabilities": dict(zip(LABELS, map(float, result.as_numpy("probabilities")[0])))}))
client.close()
