"""The project's own client (``ofa_triton``) for all four tasks, over HTTP or gRPC.

It reads the image (a path, an http(s) URL, a data: URL, base64 or bytes), builds the
tensors and parses the answers; ``*_many`` keeps many requests in flight. Prints one JSON line
per answer.

    make serve                                   # in another terminal
    .venv/bin/python clients/ofa_client_all_tasks.py [--url localhost:8000] [--image photo.jpg]
    .venv/bin/python clients/ofa_client_all_tasks.py --protocol grpc   # localhost:8001
"""

import argparse
import json
from pathlib import Path

from ofa_triton.tasks.image_captioning.client import ImageCaptionClient
from ofa_triton.tasks.visual_entailment.client import VisualEntailmentClient
from ofa_triton.tasks.visual_grounding.client import VisualGroundingClient
from ofa_triton.tasks.visual_question_answering.client import VisualQuestionAnsweringClient

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample.jpg"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", default=None,
                    help="default: localhost:8000 (HTTP), localhost:8001 (gRPC)")
parser.add_argument("--protocol", choices=["http", "grpc"], default="http")
parser.add_argument("--image", default=str(SAMPLE))
args = parser.parse_args()

# Visual entailment: one request, then several in flight.
with VisualEntailmentClient(args.url, args.protocol) as client:
    hypothesis, premise = "two people walk down a street", "a city scene"
    prediction = client.predict(args.image, hypothesis, premise=premise)
    print(json.dumps({"task": "entailment", "hypothesis": hypothesis, "premise": premise,
                      **prediction.to_dict()}))
    requests = [{"image": args.image, "hypothesis": h}
                for h in ["a dog runs on the grass", "the street is empty", "it is night"]]
    for request, prediction in zip(requests, client.predict_many(requests, concurrency=4)):
        print(json.dumps({"task": "entailment", "hypothesis": request["hypothesis"],
                          "premise": None, **prediction.to_dict()}))

# Image captioning.
with ImageCaptionClient(args.url, args.protocol) as client:
    print(json.dumps({"task": "caption", "caption": client.caption(args.image)}))

# Visual question answering.
with VisualQuestionAnsweringClient(args.url, args.protocol) as client:
    question = "what is in the picture?"
    print(json.dumps({"task": "answer", "question": question,
                      "answer": client.answer(args.image, question)}))

# Visual grounding: x0, y0, x1, y1 in the image's pixels.
with VisualGroundingClient(args.url, args.protocol) as client:
    text = "the person on the left"
    print(json.dumps({"task": "ground", "text": text,
                      "box": list(client.ground(args.image, text))}))
