"""Captioning, visual question answering and visual grounding with plain tritonclient over HTTP.

``ofa_image_caption`` takes the image and returns a caption; ``ofa_visual_question_answering``
takes the image and a question and returns an answer (here as a client-side batch: several
questions, one row each, in one request); ``ofa_visual_grounding`` takes the image and a text
and returns the box x0, y0, x1, y1 in the image's pixels. Every input is a BYTES tensor of
shape [batch, 1]. Prints one JSON line per answer.

    make serve                                   # in another terminal
    .venv/bin/python clients/generating_tasks_http.py [--url localhost:8000] [--image photo.jpg]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample.jpg"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", default="localhost:8000")
parser.add_argument("--image", type=Path, default=SAMPLE)
args = parser.parse_args()

image = args.image.read_bytes()
client = httpclient.InferenceServerClient(args.url)


def string_input(name, values):
    """A BYTES input of shape [len(values), 1]."""
    tensor = httpclient.InferInput(name, [len(values), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[v.encode() if isinstance(v, str) else v]
                                         for v in values], dtype=np.object_))
    return tensor


# Image captioning.
result = client.infer("ofa_image_caption", [string_input("image", [image])])
print(json.dumps({"task": "caption", "caption": result.as_numpy("caption")[0, 0].decode()}))

# Visual question answering: two questions about the same image in one request.
questions = ["what is in the picture?", "how many people are there?"]
result = client.infer("ofa_visual_question_answering", [
    string_input("image", [image] * len(questions)), string_input("question", questions)])
for row, question in enumerate(questions):
    print(json.dumps({"task": "answer", "row": row, "question": question,
                      "answer": result.as_numpy("answer")[row, 0].decode()}))

# Visual grounding.
text = "the person on the left"
result = client.infer("ofa_visual_grounding", [
    string_input("image", [image]), string_input("text", [text])])
print(json.dumps({"task": "ground", "text": text,
                  "box": [float(v) for v in result.as_numpy("box")[0]]}))
