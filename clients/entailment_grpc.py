"""Visual entailment with plain tritonclient over gRPC: one request, then a client-side batch.

Every input of ``ofa_visual_entailment`` is a BYTES tensor of shape [batch, 1]: the encoded
image file, the hypothesis and (optional) the premise. A batch is several rows in one request;
an empty premise means the hypothesis-only prompt. Prints one JSON line per answer.

    make serve                                   # in another terminal
    .venv/bin/python clients/entailment_grpc.py [--url localhost:8001] [--image photo.jpg]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample.jpg"
LABELS = ("entailment", "contradiction", "neutral")   # the order of "probabilities"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", default="localhost:8001")
parser.add_argument("--image", type=Path, default=SAMPLE)
args = parser.parse_args()

image = args.image.read_bytes()
client = grpcclient.InferenceServerClient(args.url)


def string_input(name, values):
    """A BYTES input of shape [len(values), 1]."""
    tensor = grpcclient.InferInput(name, [len(values), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[v.encode() if isinstance(v, str) else v]
                                         for v in values], dtype=np.object_))
    return tensor


def show(request, result, row, hypothesis, premise):
    probabilities = result.as_numpy("probabilities")[row]
    print(json.dumps({
        "request": request, "row": row, "hypothesis": hypothesis, "premise": premise,
        "label": result.as_numpy("label")[row, 0].decode(),
        "confidence": float(result.as_numpy("confidence")[row, 0]),
        "probabilities": dict(zip(LABELS, map(float, probabilities)))}))


# One request: one row.
hypothesis, premise = "two people walk down a street", "a city scene"
result = client.infer("ofa_visual_entailment", [
    string_input("image", [image]),
    string_input("hypothesis", [hypothesis]),
    string_input("premise", [premise]),
])
show("single", result, 0, hypothesis, premise)

# A client-side batch: three rows in one request, one answer per row.
hypotheses = ["a dog runs on the grass", "the street is empty", "someone is outside"]
premises = ["", "a city scene", ""]            # "" = no premise for that row
result = client.infer("ofa_visual_entailment", [
    string_input("image", [image] * len(hypotheses)),
    string_input("hypothesis", hypotheses),
    string_input("premise", premises),
])
for row, (hypothesis, premise) in enumerate(zip(hypotheses, premises)):
    show("batch", result, row, hypothesis, premise)
