"""``ofa-triton``: export OFA checkpoints for Triton, serve them, and query the services."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import limits
from .checkpoint import CheckpointError
from .container import ImageCheckError
from .deploy import DeployError
from .modeling import CheckpointMismatchError, UnsupportedCheckpointError
from .export import PRECISIONS
from .onnx_export import ExportValidationError
from .runtime import RUNTIMES, TORCH_COMPILE_MODES
from .tasks import TASKS, UnknownTaskError
from .triton_config import ENSEMBLE_MODEL

# Errors that mean "this input cannot be exported": shown as one line, exit code 2.
USER_ERRORS = (CheckpointError, CheckpointMismatchError, UnsupportedCheckpointError,
               ExportValidationError, DeployError, ImageCheckError, UnknownTaskError,
               FileNotFoundError, ValueError)


def _export(args: argparse.Namespace) -> int:
    from .export import export_repository
    from .triton_config import ServingOptions

    options = ServingOptions(device=args.device, max_batch_size=args.max_batch_size,
                             queue_delay_us=args.queue_delay_us,
                             preprocess_instances=args.preprocess_instances,
                             encoder_decoder_instances=args.encoder_decoder_instances,
                             postprocess_instances=args.postprocess_instances,
                             intra_op_threads=args.intra_op_threads,
                             max_queue_size=args.max_queue_size,
                             queue_timeout_us=args.queue_timeout_us,
                             name_prefix=args.name_prefix,
                             cuda_graph_batch_sizes=args.cuda_graph_batch_sizes,
                             torch_compile=args.torch_compile)
    export_repository(args.model, args.repository, options=options, precision=args.precision,
                      runtime=args.runtime, version=args.version, task=args.task, calibration_images=args.calibration_images,
                      patch_image_size=args.patch_image_size,
                      max_src_length=args.max_src_length, prompt_type=args.prompt_type,
                      limits=limits.from_export_arguments(args))
    return 0


def _make_tiny(args: argparse.Namespace) -> int:
    from .tiny_checkpoint import DEFAULT_IMAGE_SIZE, DEFAULT_SEED, generate_tiny_checkpoint

    path = generate_tiny_checkpoint(
        args.directory, seed=DEFAULT_SEED if args.seed is None else args.seed,
        image_size=DEFAULT_IMAGE_SIZE if args.image_size is None else args.image_size)
    print(f"wrote a tiny random-weight OFA checkpoint to {path}")
    return 0


def _make_builtin(args: argparse.Namespace) -> int:
    from .builtin import build_builtin_repository

    build_builtin_repository(args.repository, args.checkpoints)
    print(f"the built-in models (tiny, random weights, all four tasks) are in {args.repository}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .server import ServerOptions, run_foreground

    public = [task.public_model for task in TASKS.values()]
    if not any(any(args.repository.glob(f"*{name}/config.pbtxt")) for name in public):
        raise FileNotFoundError(f"{args.repository} is not an exported model repository (no "
                                f"{' or '.join(public)} in it); run ofa-triton export first")
    return run_foreground(ServerOptions(
        repository=args.repository, http_port=args.http_port, grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, host=args.host, log_verbose=args.log_verbose,
        model_control=args.model_control, admin_key=_admin_key(args)))


def _admin_key(args: argparse.Namespace) -> str | None:
    import os

    if not args.admin_key_env:
        return None
    key = os.environ.get(args.admin_key_env)
    if not key:
        raise ValueError(f"--admin-key-env {args.admin_key_env}: that variable is not set")
    return key


def _deploy(args: argparse.Namespace) -> int:
    from .deploy import deploy

    deploy(args.repository, args.version, model=args.model, url=args.url,
           admin_key=_admin_key(args))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from .deploy import rollback

    rollback(args.repository, model=args.model, url=args.url, admin_key=_admin_key(args))
    return 0


def _predict(args: argparse.Namespace) -> int:
    import json

    from .client import PredictionError
    from .tasks.visual_entailment.client import VisualEntailmentClient

    client = VisualEntailmentClient(args.url, args.protocol, model_name=args.model,
                                    timeout=args.timeout)
    if args.requests:
        lines = [json.loads(line) for line in args.requests.read_text().splitlines()
                 if line.strip()]
        results = client.predict_many(lines, concurrency=args.concurrency,
                                      return_exceptions=True)
        failed = 0
        for request, result in zip(lines, results):
            if isinstance(result, Exception):
                failed += 1
                print(json.dumps({"image": str(request.get("image"))[:200],
                                  "error": str(result)}))
            else:
                print(json.dumps(result.to_dict()))
        return 1 if failed else 0
    if not (args.image and args.hypothesis is not None):
        raise ValueError("give --image and --hypothesis, or --requests FILE.jsonl")
    try:
        prediction = client.predict(args.image, args.hypothesis, args.premise)
    except PredictionError as error:
        print(json.dumps({"error": str(error), "status": error.status}))
        return 1
    print(json.dumps(prediction.to_dict(), indent=2))
    return 0


def _ask_per_image(args: argparse.Namespace, client_class, ask_many, key: str) -> int:
    """The generative tasks' commands: every image in flight at once, one JSON line each
    (its result under ``key``, or its error); exit 1 when any failed."""
    import json

    from .client import PredictionError

    with client_class(args.url, args.protocol, model_name=args.model,
                      timeout=args.timeout) as client:
        results = ask_many(client, args)
    failed = 0
    for image, result in zip(args.image, results):
        if isinstance(result, PredictionError):
            failed += 1
            print(json.dumps({"image": image, "error": str(result), "status": result.status}))
        elif isinstance(result, Exception):
            failed += 1
            print(json.dumps({"image": image, "error": f"{type(result).__name__}: {result}"}))
        else:
            print(json.dumps({"image": image, key: result}))
    return 1 if failed else 0


def _caption(args: argparse.Namespace) -> int:
    from .tasks.image_captioning.client import ImageCaptionClient

    return _ask_per_image(args, ImageCaptionClient, lambda client, a: client.caption_many(
        a.image, concurrency=a.concurrency, return_exceptions=True), "caption")


def _answer(args: argparse.Namespace) -> int:
    from .tasks.visual_question_answering.client import VisualQuestionAnsweringClient

    return _ask_per_image(args, VisualQuestionAnsweringClient, lambda client, a: (
        client.answer_many([{"image": image, "question": a.question} for image in a.image],
                           concurrency=a.concurrency, return_exceptions=True)), "answer")


def _ground(args: argparse.Namespace) -> int:
    from .tasks.visual_grounding.client import VisualGroundingClient

    return _ask_per_image(args, VisualGroundingClient, lambda client, a: (
        client.ground_many([{"image": image, "text": a.text} for image in a.image],
                           concurrency=a.concurrency, return_exceptions=True)), "box")


def _verify(args: argparse.Namespace) -> int:
    from .manifest import verify_repository

    if not args.repository.is_dir():
        raise FileNotFoundError(f"{args.repository} is not a directory")
    results = verify_repository(args.repository)
    if not results:
        raise FileNotFoundError(f"{args.repository} holds no models (no */config.pbtxt)")
    failed = 0
    for version, problems in results.items():
        if problems:
            failed += 1
            print(f"FAIL {version}")
            for problem in problems:
                print(f"     {problem}")
        else:
            print(f"ok   {version}")
    return 1 if failed else 0


def _check_image(args: argparse.Namespace) -> int:
    from .container import DOCKERFILE, check_image

    results = check_image(args.dockerfile or DOCKERFILE, offline=args.offline)
    for result in results:
        print(f"{'ok  ' if result.ok else 'FAIL'} {result.name}")
        for line in result.details:
            print(f"     {line}")
        for problem in result.problems:
            print(f"     {problem}")
    return 0 if all(result.ok for result in results) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ofa-triton", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser(
        "export", help="export a ModelScope or Hugging Face OFA checkpoint into a Triton "
        "model repository")
    export.add_argument("--model", required=True,
                        help="a ModelScope model id (namespace/name) or a checkpoint directory")
    export.add_argument("--repository", required=True, type=Path,
                        help="the model repository directory to write into")
    export.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="where the encoder-decoder will run (default: cpu)")
    export.add_argument("--task", default=None, metavar="TASK",
                        help="the task to export the checkpoint for (default: configuration.json's "
                        "task; visual-entailment for checkpoints without one); one of: "
                        + ", ".join(TASKS))
    export.add_argument("--runtime", choices=RUNTIMES, default=None,
                        help="what runs the encoder-decoder: onnxruntime (an ONNX graph) or "
                        "torch (this project's PyTorch module, with CUDA graphs on GPUs); "
                        "default: onnxruntime for cpu, torch for gpu")
    export.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="weights' precision (default: fp32 for cpu, fp16 for gpu); bf16: "
                        "torch runtime only; int8: onnxruntime on the CPU only: "
                        "convolutions in int8 for the CPU (opt-in): the encoder-decoder about 1.6x "
                        "faster, answers within 0.05 in probability (BENCHMARKS.md)")
    export.add_argument("--calibration-images", type=Path, default=None, metavar="DIR",
                        help="with --precision int8: a directory of typical request images to "
                        "calibrate on (default: 16 generated photo-like images)")
    export.add_argument("--version", type=int, default=None,
                        help="the version to write (default: the next free number; 1 in a new "
                        "repository)")
    export.add_argument("--name-prefix", default="",
                        help="prepended to the four model names, so that several checkpoints "
                        "share one repository (for example large_ -> large_ofa_visual_entailment)")
    serving = export.add_argument_group("serving options (written into config.pbtxt)")
    serving.add_argument("--max-batch-size", type=int, default=32)
    serving.add_argument("--queue-delay-us", type=int, default=2000,
                         help="dynamic-batching delay of every step, in microseconds")
    serving.add_argument("--preprocess-instances", type=int, default=2,
                         help="CPU instances of ofa_preprocess")
    serving.add_argument("--encoder-decoder-instances", type=int, default=1,
                         help="instances of ofa_encoder_decoder (per GPU with --device gpu)")
    serving.add_argument("--postprocess-instances", type=int, default=1,
                         help="CPU instances of ofa_postprocess")
    serving.add_argument("--max-queue-size", type=int, default=256,
                         help="waiting requests per step before new ones are refused "
                         "(0: unbounded)")
    serving.add_argument("--queue-timeout-us", type=int, default=0,
                         help="longest wait in a step's queue before a request is refused "
                         "(0: no limit)")
    serving.add_argument("--intra-op-threads", type=int, default=0,
                         help="CPU threads per encoder-decoder instance (0: all cores)")
    serving.add_argument("--cuda-graph-batch-sizes", default="auto", metavar="SIZES",
                         help="torch runtime on GPUs: batch sizes captured as CUDA graphs at "
                         "load, e.g. 1,2,4,8,16,32 (auto: powers of two up to "
                         "--max-batch-size; '': none)")
    serving.add_argument("--torch-compile", choices=TORCH_COMPILE_MODES, default="none",
                         help="torch runtime: torch.compile mode (default none: eager kernels)")
    settings = export.add_argument_group(
        "task settings", "override configuration.json; needed for Hugging Face layout "
        "checkpoints, which have none (defaults: the released SNLI-VE settings)")
    settings.add_argument("--patch-image-size", type=int)
    settings.add_argument("--max-src-length", type=int)
    settings.add_argument("--prompt-type", choices=("none", "prev_output"))
    limits.add_export_arguments(export)
    export.set_defaults(handler=_export)

    serve = commands.add_parser("serve", help="run tritonserver on an exported repository "
                                "in the foreground (Ctrl-C stops it)")
    serve.add_argument("--repository", required=True, type=Path)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on")
    serve.add_argument("--log-verbose", type=int, default=0)
    serve.add_argument("--model-control", choices=("none", "explicit"), default="none",
                       help="explicit: load/unload models through the repository API")
    serve.add_argument("--admin-key-env", metavar="VARIABLE",
                       help="environment variable holding the admin key: the model-repository, "
                       "model-config and shared-memory APIs then need the header "
                       "'admin-key: <key>' (inference stays open)")
    serve.set_defaults(handler=_serve)

    for name, handler, summary in (
            ("deploy", _deploy, "serve another exported version: the repository's configs, "
             "and with --url the running server (explicit model control), with no downtime; "
             "a version that fails its checks or its load changes nothing"),
            ("rollback", _rollback, "deploy the version that served before the last deploy")):
        command = commands.add_parser(name, help=summary, description=summary)
        command.add_argument("--repository", required=True, type=Path,
                             help="the exported repository (the one the server runs)")
        command.add_argument("--url", default=None,
                             help="a running server's HTTP host:port (for example "
                             "localhost:8000) to switch now; without it, only the files change "
                             "and the next start serves the version")
        if name == "deploy":
            command.add_argument("--version", type=int, required=True,
                                 help="the version directory to serve (exported with --version)")
        command.add_argument("--model", default=ENSEMBLE_MODEL,
                             help="the ensemble (with an export's --name-prefix: the prefix + "
                             f"{ENSEMBLE_MODEL})")
        command.add_argument("--admin-key-env", metavar="VARIABLE",
                             help="environment variable holding the server's admin key")
        command.set_defaults(handler=handler)

    verify = commands.add_parser("verify", help="check an exported repository against its "
                                 "manifests (exit 0 when clean)")
    verify.add_argument("--repository", required=True, type=Path)
    verify.set_defaults(handler=_verify)

    check_image = commands.add_parser(
        "check-image", help="check the container image's Python side without Docker: base "
        "image Python, wheels for every pinned requirement, CUDA builds, the package itself")
    check_image.add_argument("--dockerfile", type=Path, default=None,
                             help="default: docker/Dockerfile of the source tree")
    check_image.add_argument("--offline", action="store_true",
                             help="skip the checks that ask the package index")
    check_image.set_defaults(handler=_check_image)

    predict = commands.add_parser("predict", help="ask a running server; prints JSON")
    predict.add_argument("--url", default=None,
                         help="host:port (default localhost:8000 for http, :8001 for grpc)")
    predict.add_argument("--protocol", choices=("http", "grpc"), default="http")
    predict.add_argument("--model", default=ENSEMBLE_MODEL,
                         help=f"the ensemble to ask (default {ENSEMBLE_MODEL}; with an export's "
                         "--name-prefix, that prefix + it)")
    predict.add_argument("--image", help="a path, an http(s) URL, a data: URL or base64")
    predict.add_argument("--hypothesis")
    predict.add_argument("--premise", default=None)
    predict.add_argument("--requests", type=Path,
                         help="a JSON-lines file of {image, hypothesis, premise?} objects, "
                         "sent asynchronously; one JSON result per line")
    predict.add_argument("--concurrency", type=int, default=16)
    predict.add_argument("--timeout", type=float, default=60.0)
    predict.set_defaults(handler=_predict)

    for name, handler, model, what, text_flag, text_help in (
            ("caption", _caption, "ofa_image_caption", "captions (image captioning exports)",
             None, None),
            ("answer", _answer, "ofa_visual_question_answering",
             "answers to one question about each image (visual question answering exports)",
             "--question", "the question asked about every image"),
            ("ground", _ground, "ofa_visual_grounding",
             "the box of one description in each image (visual grounding exports): x0, y0, "
             "x1, y1 in the image's pixels", "--text", "the region to find in every image")):
        command = commands.add_parser(name, help=f"ask a running server for {what}; prints "
                                      "one JSON line per image")
        command.add_argument("image", nargs="+",
                             help="paths, http(s) URLs, data: URLs or base64 of the images")
        if text_flag:
            command.add_argument(text_flag, required=True, help=text_help)
        command.add_argument("--url", default=None,
                             help="host:port (default localhost:8000 for http, :8001 for grpc)")
        command.add_argument("--protocol", choices=("http", "grpc"), default="http")
        command.add_argument("--model", default=model,
                             help=f"the ensemble to ask (with an export's --name-prefix, that "
                             f"prefix + {model})")
        command.add_argument("--concurrency", type=int, default=16)
        command.add_argument("--timeout", type=float, default=60.0)
        command.set_defaults(handler=handler)

    tiny = commands.add_parser(
        "make-tiny-checkpoint", help="write the generated tiny checkpoint (random weights)")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--seed", type=int, default=None)
    tiny.add_argument("--image-size", type=int, default=None)
    tiny.set_defaults(handler=_make_tiny)

    builtin = commands.add_parser(
        "make-builtin-repository", help="generate a tiny checkpoint (random weights) for each "
        "task and export them all into one repository: the built-in default model of make serve "
        "(what exists already is kept)")
    builtin.add_argument("repository", type=Path)
    builtin.add_argument("--checkpoints", type=Path, default=Path("work/checkpoints"),
                         help="where the generated checkpoints go (default: work/checkpoints)")
    builtin.set_defaults(handler=_make_builtin)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except USER_ERRORS as error:
        print(f"ofa-triton {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ofa-triton {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
