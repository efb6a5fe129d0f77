"""The service Triton replaces: a small web app (aiohttp), one request at a time.

    python -m benchmarks.baseline_app --kind modelscope --model DIR --port 9001   # .venv-ref
    python -m benchmarks.baseline_app --kind eager --model DIR --port 9002        # .venv

``modelscope``: ModelScope's own ``pipeline(Tasks.visual_entailment)`` per request, as seed
users run it (run it with the reference environment's interpreter). ``eager``: this project's
PyTorch module, unbatched, in the same shape, on the GPU when there is one (as ModelScope's
pipeline is). ``modelscope-caption``/``eager-caption``, ``modelscope-vqa``/``eager-vqa`` and
``modelscope-grounding``/``eager-grounding``: the same for the generating tasks (ModelScope's
``pipeline(Tasks.image_captioning | visual_question_answering | visual_grounding)``; this
project's generation module and beam search). All: ``POST /predict`` with ``{"image_b64",
"hypothesis", "premise", "question", "text"}`` (each task reads its own),
answered under one lock, like the single-worker web app of the seed figure (1.8 s average
latency, 11 req/s at 20 users for OFA-large). aiohttp, not FastAPI: it is in both the
reference environment and the GPU machines' image, so one app serves every benchmark.
"""


import argparse
import base64
import io
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


Predict = Callable[[bytes, dict], dict]


def _picture(image: bytes):
    """What modelscope.preprocessors.image.load_image does with a file."""
    from PIL import Image, ImageOps

    return ImageOps.exif_transpose(Image.open(io.BytesIO(image))).convert("RGB")


def modelscope_predictor(model_dir: str) -> Predict:
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    pipe = pipeline(Tasks.visual_entailment, model=model_dir)

    def predict(image: bytes, body: dict) -> dict:
        data = {"image": _picture(image), "text": body["hypothesis"]}
        if body.get("premise"):
            data["text2"] = body["premise"]
        result = pipe(data)
        return {"answer": result["labels"], "score": float(result["scores"])}

    return predict


def modelscope_caption_predictor(model_dir: str) -> Predict:
    import types

    # ModelScope's captioning pipeline imports open_clip when it loads; OFA never calls it.
    sys.modules.setdefault("open_clip", types.ModuleType("open_clip"))
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    pipe = pipeline(Tasks.image_captioning, model=model_dir)

    def predict(image: bytes, body: dict) -> dict:
        return {"caption": pipe(_picture(image))["caption"][0]}

    return predict


def modelscope_vqa_predictor(model_dir: str) -> Predict:
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    pipe = pipeline(Tasks.visual_question_answering, model=model_dir)

    def predict(image: bytes, body: dict) -> dict:
        result = pipe({"image": _picture(image), "text": body["question"]})
        return {"answer": result["text"][0] if result.get("text") else result["labels"]}

    return predict


def modelscope_grounding_predictor(model_dir: str) -> Predict:
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    pipe = pipeline(Tasks.visual_grounding, model=model_dir)

    def predict(image: bytes, body: dict) -> dict:
        return {"box": pipe({"image": _picture(image), "text": body["text"]})["boxes"][0]}

    return predict


def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"   # as ModelScope's pipeline does


def eager_predictor(model_dir: str) -> Predict:
    import torch

    from ofa_triton.export import load_checkpoint
    from ofa_triton.tasks.visual_entailment.labels import scores_to_outputs
    from ofa_triton.tasks.visual_entailment.preprocessing import VisualEntailmentPreprocessor

    loaded = load_checkpoint(model_dir)
    preprocessor = VisualEntailmentPreprocessor(loaded.settings, loaded.checkpoint.vocab_file,
                                                loaded.checkpoint.merges_file)
    device = _device()
    model = loaded.model.to(device)

    def predict(image: bytes, body: dict) -> dict:
        source = preprocessor.source_ids(body["hypothesis"], body.get("premise") or None)
        decoder = preprocessor.text.decoder_prompt_ids(source)
        pixels = torch.from_numpy(preprocessor.image_inputs(image))[None].to(device)
        with torch.inference_mode():
            scores = model(torch.tensor([source], device=device), pixels,
                           torch.tensor([decoder], device=device)).cpu()
        labels, confidence, _ = scores_to_outputs(scores.numpy(), loaded.settings.task.answers)
        return {"label": labels[0], "score": float(confidence[0])}

    return predict


def eager_generation_predictor(model_dir: str) -> Predict:
    """This project's generation module and beam search, one request at a time, for the
    checkpoint's task (captioning, VQA or grounding)."""
    import numpy as np
    import torch

    from ofa_triton.export import load_checkpoint
    from ofa_triton.generation.answers import AnswerTrie
    from ofa_triton.generation.search import generate, special_tokens
    from ofa_triton.tensor_names import INPUT_IDS, PATCH_IMAGES

    loaded = load_checkpoint(model_dir)
    task, text = loaded.settings.task, loaded.text
    name = loaded.checkpoint.task.name
    device = _device()
    model = loaded.model.to(device)
    trie = AnswerTrie(task.answer_ids, text.bos_id, text.eos_id) if task.answer_ids else None
    if name == "image-captioning":
        from ofa_triton.tasks.image_captioning import caption_text
        from ofa_triton.tasks.image_captioning.preprocessing import CaptionPreprocessor as Pre
    elif name == "visual-question-answering":
        from ofa_triton.tasks.visual_question_answering import answer_text
        from ofa_triton.tasks.visual_question_answering.preprocessing import VqaPreprocessor as Pre
    else:
        from ofa_triton.tasks.visual_grounding.box import box_from_tokens
        from ofa_triton.tasks.visual_grounding.preprocessing import GroundingPreprocessor as Pre
    preprocessor = Pre(loaded.settings, loaded.checkpoint.vocab_file,
                       loaded.checkpoint.merges_file)

    def predict(image: bytes, body: dict) -> dict:
        if name == "image-captioning":
            tensors = preprocessor(image)
        else:
            tensors = preprocessor(image, body["question" if name.startswith("visual-q")
                                                else "text"])
        ids = tensors[INPUT_IDS][tensors[INPUT_IDS] != text.pad_id]   # unpadded, as one
        [hypotheses] = generate(model, torch.from_numpy(ids)[None].to(device),
                                torch.from_numpy(tensors[PATCH_IMAGES])[None].to(device),
                                task.generation, special_tokens(text), constrain=trie)
        best = hypotheses[0].tokens
        if name == "image-captioning":
            return {"caption": caption_text(text, best)}
        if name == "visual-question-answering":
            return {"answer": answer_text(text, best, task.answers, -1)}
        return {"box": box_from_tokens(np.array(best), tensors["image_size"], task,
                                       text.eos_id).tolist()}

    return predict


PREDICTORS = {"modelscope": modelscope_predictor, "eager": eager_predictor,
              "modelscope-caption": modelscope_caption_predictor,
              "eager-caption": eager_generation_predictor,
              "modelscope-vqa": modelscope_vqa_predictor,
              "eager-vqa": eager_generation_predictor,
              "modelscope-grounding": modelscope_grounding_predictor,
              "eager-grounding": eager_generation_predictor}


def create_app(predict: Predict):
    import asyncio

    from aiohttp import web

    one_at_a_time = asyncio.Lock()

    async def health(_request):
        return web.json_response({"ok": True})

    async def predict_endpoint(request):
        try:
            body = await request.json()
            image = base64.b64decode(body["image_b64"], validate=True)
        except (ValueError, KeyError, TypeError) as error:
            raise web.HTTPBadRequest(text=f"expected JSON with image_b64 (base64) and the "
                                     f"task's texts: {error}") from None
        async with one_at_a_time:
            result = await asyncio.get_running_loop().run_in_executor(None, predict, image, body)
        return web.json_response(result)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/health", health)
    app.router.add_post("/predict", predict_endpoint)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=sorted(PREDICTORS), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    from aiohttp import web

    if args.threads:
        torch.set_num_threads(args.threads)
    web.run_app(create_app(PREDICTORS[args.kind](args.model)), host="127.0.0.1", port=args.port,
                print=None, access_log=None)


if __name__ == "__main__":
    main()
