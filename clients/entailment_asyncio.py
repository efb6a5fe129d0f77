"""Visual entailment from asyncio: many requests in flight on one tritonclient.http.aio client.

Each request is one row; Triton's dynamic batching groups the requests in flight into batches
on the server. A semaphore caps how many are in flight. Prints one JSON line per request, in
the order sent.

    make serve                                   # in another terminal
    .venv/bin/python clients/entailment_asyncio.py [--url localhost:8000] [--image photo.jpg] \
        [--requests 32] [--concurrency 8]
"""

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np
import tritonclient.http.aio as aioclient

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


def string_input(name, value):
    tensor = aioclient.InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))
    return tensor


async def predict(client, limit, index, image, hypothesis):
    async with limit:
        result = await client.infer("ofa_visual_entailment", [
            string_input("image", image), string_input("hypothesis", hypothesis.encode())])
    return {"index": index, "hypothesis": hypothesis, "premise": None,
            "label": result.as_numpy("label")[0, 0].decode(),
            "confidence": float(result.as_numpy("confidence")[0, 0]),
            "probabilities": dict(zip(LABELS, map(float, result.as_numpy("probabilities")[0])))}


async def main():
    image = args.image.read_bytes()
    client = aioclient.InferenceServerClient(args.url)
    limit = asyncio.Semaphore(args.concurrency)
    try:
        answers = await asyncio.gather(*(
            predict(client, limit, i, image, HYPOTHESES[i % len(HYPOTHESES)])
            for i in range(args.requests)))
    finally:
        await client.close()
    for answer in answers:
        print(json.dumps(answer))


asyncio.run(main())
