"""``ofa-triton``: export OFA checkpoints for Triton, serve them, and query the services."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The modules that need torch or onnx (export, checkpoint, modeling) are imported by the
# commands that use them, so that `serve`, `deploy` and the clients start without them (the
# GPU image's `ofa-triton serve` keeps 240 MB and a second less).
from . import limits
from .container import ImageCheckError
from .deploy import DeployError
from .perf_inputs import DEFAULT_COUNT, DEFAULT_SEED
from .runtime import PRECISIONS, RUNTIMES, TORCH_COMPILE_MODES
from .tasks import TASKS, UnknownTaskError
from .server import ServerOptions, open_admin_apis_warning
from .service_health import HEALTH_PORT, HealthPortError
from .triton_config import ENSEMBLE_MODEL, ServingOptions

# Errors that mean "this input cannot be used": shown as one line, exit code 2. The checkpoint
# errors (CheckpointError, CheckpointMismatchError, UnsupportedCheckpointError) are
# ValueErrors.
USER_ERRORS = (DeployError, ImageCheckError, UnknownTaskError, HealthPortError,
               FileNotFoundError, ValueError)


def _user_errors() -> tuple[type[BaseException], ...]:
    """USER_ERRORS, and ExportValidationError once its module is loaded (only an export can
    raise it, and importing it would load torch)."""
    onnx_export = sys.modules.get(f"{__package__}.onnx_export")
    return USER_ERRORS + ((onnx_export.ExportValidationError,) if onnx_export else ())


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


def _defaults(options_class) -> dict:
    """{field: default} of a dataclass of options: the one place each default is written."""
    import dataclasses

    return {field.name: field.default for field in dataclasses.fields(options_class)
            if field.default is not dataclasses.MISSING}


SERVING_DEFAULTS = _defaults(ServingOptions)
SERVER_DEFAULTS = _defaults(ServerOptions)


def _perf_inputs(args: argparse.Namespace) -> int:
    from .perf_inputs import resolve_task, write_model_inputs

    task = resolve_task(args.model, args.task)
    summary = write_model_inputs(args.output, task, images=args.images, texts=args.texts,
                                 count=args.count, seed=args.seed)
    print(f"wrote {summary.requests} request(s) for {summary.model} ({', '.join(summary.inputs)}"
          f"; images: {summary.images}; texts: {summary.texts}) to {summary.path}\n"
          f"run: ofa-triton perf -m {args.model or summary.model} --input-data {summary.path}")
    return 0


def _model_analyzer_config(args: argparse.Namespace) -> int:
    from .model_analyzer import MODEL_ANALYZER_VERSION, write_workspace

    profile = write_workspace(args.repository, args.model, args.output, images=args.images,
                              texts=args.texts, max_concurrency=args.max_concurrency,
                              max_instances=args.max_instances,
                              max_batch_size=args.max_batch_size)
    print(f"wrote {profile} (and the ensemble's copy, the server and perf_analyzer wrappers, "
          f"the inputs beside it). Run, with triton-model-analyzer=={MODEL_ANALYZER_VERSION} "
          f"installed (make model-analyzer does it all; about 8 minutes on 2 cores):\n"
          f"  model-analyzer profile -f {profile}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers separated by commas")
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers >= 0, comma separated")
    return values


def _tune(args: argparse.Namespace) -> int:
    from .tune import grid, tune

    candidates = grid(args.max_batch_sizes, args.queue_delays_us, args.preprocess_instances,
                      args.encoder_decoder_instances)
    print(f"measuring {len(candidates)} configuration(s) of {args.model} at concurrency "
          f"{args.concurrency}, {args.measurement_ms} ms windows (about "
          f"{len(candidates) * (20 + 3 * args.measurement_ms // 1000)} s on a CPU)", flush=True)
    summary = tune(args.repository, args.model, candidates, args.concurrency, args.p99_ms,
                   args.output, inputs=args.input_data, measurement_ms=args.measurement_ms,
                   progress=lambda line: print(line, flush=True))
    best = summary["best"]
    print(f"results: {args.output / 'tune.json'}")
    if best is None:
        print(f"no configuration kept p99 within {args.p99_ms:g} ms at concurrency "
              f"{args.concurrency}: raise --p99-ms, lower --concurrency, or add instances")
        return 1
    print(f"best within p99 {args.p99_ms:g} ms: {best['throughput']:.1f} infer/s, p99 "
          f"{best['p99_ms']:.0f} ms")
    print(f"export with: ofa-triton export ... {best['flags']}")
    return 0


# With -i grpc: where ofa-triton serve listens by default.
PERF_DEFAULT_URL = f"localhost:{SERVER_DEFAULTS['grpc_port']}"


def _perf(args: argparse.Namespace) -> int:
    import subprocess
    import tempfile

    from .perf import perf_analyzer_binary, perf_analyzer_environment
    from .perf_inputs import task_of_model, write_model_inputs

    binary = perf_analyzer_binary()
    model = args.model or ENSEMBLE_MODEL
    argv = [str(binary), "-m", model]
    if args.url is None and args.protocol is None:
        argv += ["-u", PERF_DEFAULT_URL, "-i", "grpc"]
    else:
        argv += (["-u", args.url] if args.url else []) + (["-i", args.protocol] if args.protocol
                                                         else [])
    with tempfile.TemporaryDirectory(prefix="ofa-triton-perf-") as scratch:
        env = perf_analyzer_environment(Path(scratch), strict=False)
        if args.input_data is None:
            summary = write_model_inputs(Path(scratch) / "inputs.json", task_of_model(model))
            print(f"ofa-triton perf: {summary.requests} requests for {model} (images: "
                  f"{summary.images}; texts: {summary.texts}); for your own, ofa-triton "
                  "perf-inputs, then --input-data FILE", file=sys.stderr, flush=True)
            argv += ["--input-data", str(summary.path)]
        else:
            argv += ["--input-data", args.input_data]
        argv += args.perf_analyzer_arguments
        returncode = subprocess.run(argv, env=env).returncode
    if returncode == 127:   # the loader's: a shared library not found
        print("ofa-triton perf: perf_analyzer could not start; the libraries it needs come "
              "with the serving extra (pip install -e '.[serve]': nvidia-pytriton), or install "
              "libb64-0d and the CUDA 12 runtime", file=sys.stderr)
    return returncode


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
    from .foreground import run_foreground

    public = [task.public_model for task in TASKS.values()]
    if not any(any(args.repository.glob(f"*{name}/config.pbtxt")) for name in public):
        raise FileNotFoundError(f"{args.repository} is not an exported model repository (no "
                                f"{' or '.join(public)} in it); run ofa-triton export first")
    options = ServerOptions(
        repository=args.repository, http_port=args.http_port, grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, host=args.host, log_verbose=args.log_verbose,
        model_control=args.model_control, admin_key=_admin_key(args))
    warning = open_admin_apis_warning(options)
    if warning:
        print(f"ofa-triton serve: {warning}", file=sys.stderr, flush=True)
    return run_foreground(options, watchdog=not args.no_watchdog,
                          health_port=args.health_port or None)


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
           admin_key=_admin_key(args), preflight=args.preflight)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from .deploy import rollback

    rollback(args.repository, model=args.model, url=args.url, admin_key=_admin_key(args),
             preflight=args.preflight)
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
    export.add_argument("--device", choices=("cpu", "gpu"), default=SERVING_DEFAULTS["device"],
                        help="where the encoder-decoder will run (default: %(default)s)")
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
                        "faster, answers within 0.02 in probability (BENCHMARKS.md)")
    export.add_argument("--calibration-images", type=Path, default=None, metavar="DIR",
                        help="with --precision int8: a directory of typical request images to "
                        "calibrate on (default: 16 generated photo-like images)")
    export.add_argument("--version", type=int, default=None,
                        help="the version to write (default: the next free number; 1 in a new "
                        "repository)")
    export.add_argument("--name-prefix", default=SERVING_DEFAULTS["name_prefix"],
                        help="prepended to the four model names, so that several checkpoints "
                        "share one repository (for example large_ -> large_ofa_visual_entailment)")
    # The defaults are ServingOptions' (triton_config.py), written there only.
    serving = export.add_argument_group("serving options (written into config.pbtxt)")
    default = SERVING_DEFAULTS
    serving.add_argument("--max-batch-size", type=int, default=default["max_batch_size"],
                         help="(default: %(default)s)")
    serving.add_argument("--queue-delay-us", type=int, default=default["queue_delay_us"],
                         help="dynamic-batching delay of every step, in microseconds "
                         "(default: %(default)s)")
    serving.add_argument("--preprocess-instances", type=int,
                         default=default["preprocess_instances"],
                         help="CPU instances of ofa_preprocess (default: %(default)s)")
    serving.add_argument("--encoder-decoder-instances", type=int,
                         default=default["encoder_decoder_instances"],
                         help="instances of ofa_encoder_decoder (per GPU with --device gpu; "
                         "default: %(default)s)")
    serving.add_argument("--postprocess-instances", type=int,
                         default=default["postprocess_instances"],
                         help="CPU instances of ofa_postprocess (default: %(default)s)")
    serving.add_argument("--max-queue-size", type=int, default=default["max_queue_size"],
                         help="waiting requests per step before new ones are refused "
                         "(0: unbounded; default: %(default)s)")
    serving.add_argument("--queue-timeout-us", type=int, default=default["queue_timeout_us"],
                         help="longest wait in a step's queue before a request is refused "
                         "(0: no limit; default: %(default)s)")
    serving.add_argument("--intra-op-threads", type=int, default=default["intra_op_threads"],
                         help="CPU threads per encoder-decoder instance (0: all cores; "
                         "default: %(default)s)")
    serving.add_argument("--cuda-graph-batch-sizes", metavar="SIZES",
                         default=default["cuda_graph_batch_sizes"],
                         help="torch runtime on GPUs: batch sizes captured as CUDA graphs at "
                         "load, e.g. 1,2,4,8,16,32 (auto: powers of two up to "
                         "--max-batch-size; '': none; default: %(default)s)")
    serving.add_argument("--torch-compile", choices=TORCH_COMPILE_MODES,
                         default=default["torch_compile"],
                         help="torch runtime: torch.compile mode (default %(default)s: eager "
                         "kernels)")
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
    # The defaults are ServerOptions' (server.py).
    serve.add_argument("--http-port", type=int, default=SERVER_DEFAULTS["http_port"])
    serve.add_argument("--grpc-port", type=int, default=SERVER_DEFAULTS["grpc_port"])
    serve.add_argument("--metrics-port", type=int, default=SERVER_DEFAULTS["metrics_port"])
    serve.add_argument("--host", default=SERVER_DEFAULTS["host"], help="address to listen on")
    serve.add_argument("--log-verbose", type=int, default=SERVER_DEFAULTS["log_verbose"])
    serve.add_argument("--model-control", choices=("none", "explicit"),
                       default=SERVER_DEFAULTS["model_control"],
                       help="explicit: load/unload models through the repository API")
    serve.add_argument("--admin-key-env", metavar="VARIABLE",
                       help="environment variable holding the admin key: the model-repository, "
                       "model-config, shared-memory, trace and logging APIs then need the header "
                       "'admin-key: <key>' (inference, health, metadata and statistics stay "
                       "open)")
    serve.add_argument("--no-watchdog", action="store_true",
                       help="do not replace dead or failing Python stubs (by default the "
                       "watchdog reloads the model in place with --model-control explicit, or "
                       "restarts the server; docs/watchdog.md)")
    serve.add_argument("--health-port", type=int, default=HEALTH_PORT,
                       help="port of the service's own /ready and /live (default "
                       f"{HEALTH_PORT}; 0: none): ready only while every ensemble is ready and "
                       "no step is broken, for load balancers (docs/watchdog.md)")
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
        command.add_argument("--no-preflight", dest="preflight", action="store_false",
                             help="skip the pre-flight (loading and warming up the version in a "
                             "throwaway tritonserver before the live server or the files "
                             "change); for a host that cannot load it (no GPU, other packages "
                             "than the server's)")
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
            ("caption", _caption, TASKS["image-captioning"].public_model,
             "captions (image captioning exports)", None, None),
            ("answer", _answer, TASKS["visual-question-answering"].public_model,
             "answers to one question about each image (visual question answering exports)",
             "--question", "the question asked about every image"),
            ("ground", _ground, TASKS["visual-grounding"].public_model,
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

    public_models = ", ".join(task.public_model for task in TASKS.values())
    perf_inputs = commands.add_parser(
        "perf-inputs", help="write perf_analyzer's --input-data JSON for a public model, from "
        "your own images and texts (or generated ones)",
        description="Write perf_analyzer's --input-data JSON for a public model: one request "
        "per image (and per text line, the shorter list cycled); every input a BYTES [1] "
        "element. Run it with: ofa-triton perf -m MODEL --input-data FILE")
    perf_inputs.add_argument("--images", type=Path, metavar="DIR",
                             help="a folder of images (its "
                             f"{', '.join(f.lower() for f in limits.DEFAULT_IMAGE_FORMATS)} "
                             "files; not its subfolders), or one image file; each is checked "
                             "as the server checks it (default: generated photo-like JPEGs)")
    perf_inputs.add_argument("--texts", type=Path, metavar="FILE",
                             help="UTF-8 text, one request's text per line: entailment's "
                             "hypothesis (or hypothesis<TAB>premise), VQA's question, "
                             "grounding's region description (default: built-in ones)")
    which = perf_inputs.add_mutually_exclusive_group()
    which.add_argument("--model", help=f"the public model ({public_models}; an export's "
                       f"--name-prefix allowed; default {ENSEMBLE_MODEL})")
    which.add_argument("--task", help="or the task: " + ", ".join(TASKS))
    perf_inputs.add_argument("--output", type=Path, default=Path("perf_inputs.json"),
                             metavar="FILE",
                             help="the JSON file to write (default: %(default)s)")
    perf_inputs.add_argument("--count", type=int, default=None,
                             help=f"generated images: how many (default {DEFAULT_COUNT}); "
                             "with --images: at most that many requests")
    perf_inputs.add_argument("--seed", type=int, default=DEFAULT_SEED,
                             help="generated images: the first seed (default: %(default)s)")
    perf_inputs.set_defaults(handler=_perf_inputs)

    perf = commands.add_parser(
        "perf", allow_abbrev=False, usage="%(prog)s [-m MODEL] [-u URL] [-i {grpc,http}] "
        "[--input-data FILE] [perf_analyzer arguments ...]",
        help="run the bundled perf_analyzer (with the libraries it needs) against a running "
        "server; other arguments go to perf_analyzer",
        description="Run tritonclient's perf_analyzer with the libraries it needs. Every "
        "argument not listed here goes to perf_analyzer as it is (for example "
        "--concurrency-range 1:8 --measurement-interval 5000 -f results.csv); its exit code "
        "is this command's. Without --input-data, the -m model's inputs are generated "
        f"({DEFAULT_COUNT} photo-like JPEGs with built-in texts; ofa-triton perf-inputs writes "
        "them from your own images).")
    perf.add_argument("-m", dest="model", metavar="MODEL",
                      help=f"the model (default {ENSEMBLE_MODEL})")
    perf.add_argument("-u", dest="url", metavar="URL",
                      help=f"the server (default with neither -u nor -i: {PERF_DEFAULT_URL} "
                      "over gRPC; else perf_analyzer's)")
    perf.add_argument("-i", dest="protocol", metavar="{grpc,http}",
                      help="the protocol (default: grpc when -u is not given either)")
    perf.add_argument("--input-data", metavar="FILE",
                      help="perf_analyzer's input data (default: generated for -m's model)")
    perf.set_defaults(handler=_perf, passes_through=True)

    analyzer = commands.add_parser(
        "model-analyzer-config", help="write a workspace for Triton's model-analyzer to profile "
        "an ensemble of an exported repository (local launch, CPU only, quick search)")
    analyzer.add_argument("--repository", required=True, type=Path)
    analyzer.add_argument("--model", default=ENSEMBLE_MODEL,
                          help=f"the ensemble to profile (default {ENSEMBLE_MODEL})")
    analyzer.add_argument("--output", type=Path, default=Path("work/model-analyzer"),
                          help="the workspace directory (default: %(default)s)")
    analyzer.add_argument("--images", type=Path, metavar="DIR",
                          help="request images, as for perf-inputs (default: generated)")
    analyzer.add_argument("--texts", type=Path, metavar="FILE",
                          help="request texts, as for perf-inputs (default: built-in)")
    analyzer.add_argument("--max-concurrency", type=int, default=16)
    analyzer.add_argument("--max-instances", type=int, default=2,
                          help="most instances per step the search tries")
    analyzer.add_argument("--max-batch-size", type=int, default=8,
                          help="largest max_batch_size the search tries")
    analyzer.set_defaults(handler=_model_analyzer_config)

    sweep = commands.add_parser(
        "tune", help="measure a grid of instance counts, max batch sizes and queue delays with "
        "perf_analyzer on an exported repository; print the fastest within a p99 budget and "
        "its export flags (the search model-analyzer cannot make on an ensemble)")
    sweep.add_argument("--repository", required=True, type=Path)
    sweep.add_argument("--model", default=ENSEMBLE_MODEL,
                       help=f"the ensemble to tune (default {ENSEMBLE_MODEL})")
    sweep.add_argument("--p99-ms", type=float, required=True,
                       help="the latency budget: p99 of the ensemble, in milliseconds")
    sweep.add_argument("--concurrency", type=int, default=8,
                       help="requests in flight while measuring (default: %(default)s)")
    sweep.add_argument("--max-batch-sizes", type=_int_list, default=[8, 32], metavar="N,N",
                       help="default: 8,32")
    sweep.add_argument("--queue-delays-us", type=_int_list, default=[0, 2000, 10000],
                       metavar="US,US", help="default: 0,2000,10000")
    sweep.add_argument("--preprocess-instances", type=_int_list, default=[2], metavar="N,N",
                       help="default: 2")
    sweep.add_argument("--encoder-decoder-instances", type=_int_list, default=[1, 2],
                       metavar="N,N", help="default: 1,2")
    sweep.add_argument("--input-data", type=Path, metavar="FILE",
                       help="perf_analyzer's input data (ofa-triton perf-inputs; default: "
                       "generated for the model)")
    sweep.add_argument("--measurement-ms", type=int, default=4000,
                       help="perf_analyzer's window (default: %(default)s)")
    sweep.add_argument("--output", type=Path, default=Path("work/tune"),
                       help="where the candidates, logs and tune.json go (default: %(default)s)")
    sweep.set_defaults(handler=_tune)

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
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "passes_through", False):
        args.perf_analyzer_arguments = unknown   # ofa-triton perf: perf_analyzer's own
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.handler(args)
    except Exception as error:
        if not isinstance(error, _user_errors()):
            raise
        print(f"ofa-triton {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ofa-triton {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
