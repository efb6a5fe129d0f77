"""``ofa-triton``: export checkpoints for Triton, and make the built-in tiny checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoint import CheckpointError
from .modeling import CheckpointMismatchError, UnsupportedCheckpointError
from .onnx_export import PRECISIONS, ExportValidationError

# Errors that mean "this input cannot be exported": shown as one line, exit code 2.
USER_ERRORS = (CheckpointError, CheckpointMismatchError, UnsupportedCheckpointError,
               ExportValidationError, FileNotFoundError, ValueError)


def _export(args: argparse.Namespace) -> int:
    from .export import export_repository

    export_repository(args.model, args.repository, device=args.device, precision=args.precision,
                      version=args.version, patch_image_size=args.patch_image_size,
                      max_src_length=args.max_src_length, prompt_type=args.prompt_type)
    return 0


def _make_tiny(args: argparse.Namespace) -> int:
    from .tiny_checkpoint import DEFAULT_IMAGE_SIZE, DEFAULT_SEED, generate_tiny_checkpoint

    path = generate_tiny_checkpoint(
        args.directory, seed=DEFAULT_SEED if args.seed is None else args.seed,
        image_size=DEFAULT_IMAGE_SIZE if args.image_size is None else args.image_size)
    print(f"wrote a tiny random-weight OFA checkpoint to {path}")
    return 0


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
    export.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="graph precision (default: fp32 for cpu, fp16 for gpu)")
    export.add_argument("--version", type=int, default=1, help="model version directory")
    settings = export.add_argument_group(
        "task settings", "override configuration.json; needed for Hugging Face layout "
        "checkpoints, which have none (defaults: the released SNLI-VE settings)")
    settings.add_argument("--patch-image-size", type=int)
    settings.add_argument("--max-src-length", type=int)
    settings.add_argument("--prompt-type", choices=("none", "prev_output"))
    export.set_defaults(handler=_export)

    tiny = commands.add_parser(
        "make-tiny-checkpoint", help="write the generated tiny checkpoint (random weights)")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--seed", type=int, default=None)
    tiny.add_argument("--image-size", type=int, default=None)
    tiny.set_defaults(handler=_make_tiny)
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
