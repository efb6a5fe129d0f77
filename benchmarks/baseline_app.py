"""The service Triton replaces: a small web app (aiohttp), one request at a time.

    python -m benchmarks.baseline_app --kind modelscope --model DIR --port 9001   # .venv-ref
    python -m benchmarks.baseline_app --kind eager --model DIR --port 9002        # .venv

``modelscope``: ModelScope's own ``pipeline(Tasks.visual_entailment)`` per request, as seed
users run it (run it with the reference environment's interpreter). ``eager``: this project's
PyTorch module, unbatched, in the same shape, on the GPU when there is one (as ModelScope's
pipeline is). Both: ``POST /predict`` with ``{"image_b64", "hypothesis", "premise"}``,
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


def modelscope_predictor(model_dir: str) -> Callable[[bytes, str, str | None], dict]:
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks
    from PIL import Image, ImageOps

    pipe = pipeline(Tasks.visual_entailment, model=model_dir)

    def predict(image: bytes, hypothesis: str, premise: str | None) -> dict:
        # What modelscope.preprocessors.image.load_image does with a file.
        picture = ImageOps.exif_transpose(Image.open(io.BytesIO(image))).convert("RGB")
        data = {"image": picture, "text": hypothesis}
        if premise:
            data["text2"] = premise
        result = pipe(data)
        return {"answer": result["labels"], "score": float(result["scores"])}

    return predict


def eager_predictor(model_dir: str) -> Callable[[bytes, str, str | None], dict]:
    import torch

    from ofa_triton.export import load_checkpoint
    from ofa_triton.tasks.visual_entailment.labels import scores_to_outputs
    from ofa_triton.tasks.visual_entailment.preprocessing import VisualEntailmentPreprocessor

    loaded = load_checkpoint(model_dir)
    preprocessor = VisualEntailmentPreprocessor(loaded.settings, loaded.checkpoint.vocab_file,
                                                loaded.checkpoint.merges_file)
    device = "cuda" if torch.cuda.is_available() else "cpu"   # as ModelScope's pipeline does
    model = loaded.model.to(device)

    def predict(image: bytes, hypothesis: str, premise: str | None) -> dict:
        source = preprocessor.source_ids(hypothesis, premise or None)
        decoder = preprocessor.text.decoder_prompt_ids(source)
        pixels = torch.from_numpy(preprocessor.image_inputs(image))[None].to(device)
        with torch.inference_mode():
            scores = model(torch.tensor([source], device=device), pixels,
                           torch.tensor([decoder], device=device)).cpu()
        labels, confidence, _ = scores_to_outputs(scores.numpy(), loaded.settings.task.answers)
        return {"label": labels[0], "score": float(confidence[0])}

    return predict


def create_app(predict: Callable[[bytes, str, str | None], dict]):
    import asyncio

    from aiohttp import web

    one_at_a_time = asyncio.Lock()

    async def health(_request):
        return web.json_response({"ok": True})

    async def predict_endpoint(request):
        try:
            body = await request.json()
            image = base64.b64decode(body["image_b64"], validate=True)
            hypothesis, premise = str(body["hypothesis"]), body.get("premise")
        except (ValueError, KeyError, TypeError) as error:
            raise web.HTTPBadRequest(text=f"expected JSON with image_b64 (base64), hypothesis "
                                     f"and optional premise: {error}") from None
        async with one_at_a_time:
            result = await asyncio.get_running_loop().run_in_executor(
                None, predict, image, hypothesis, premise)
        return web.json_response(result)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/health", health)
    app.router.add_post("/predict", predict_endpoint)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=("modelscope", "eager"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    from aiohttp import web

    if args.threads:
        torch.set_num_threads(args.threads)
    factory = modelscope_predictor if args.kind == "modelscope" else eager_predictor
    web.run_app(create_app(factory(args.model)), host="127.0.0.1", port=args.port,
                print=None, access_log=None)


if __name__ == "__main__":
    main()
