"""The built-in default model: one generated tiny checkpoint per task (random weights, OFA-tiny
dimensions), exported into one repository, so that ``make serve`` offers all four services
offline. ``make serve``, the client examples' tests and the quick start use this one place."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .tasks import TASKS

# Per task: the generator's arguments, those of the tests' goldens (tests/golden/cases.py), so
# that the built-in services answer as the goldens say. Entailment and captioning are the
# generator's defaults; VQA and grounding take the seeds whose answers differ from image to
# image, grounding at a 256 px patch with a 256 px max_image_size.
BUILTIN_CHECKPOINTS: dict[str, dict] = {
    "visual-entailment": {},
    "image-captioning": dict(task="image-captioning"),
    "visual-question-answering": dict(task="visual-question-answering", seed=1),
    "visual-grounding": dict(task="visual-grounding", seed=3, image_size=256,
                             max_image_size=256),
}


def build_builtin_repository(repository: str | Path, checkpoints: str | Path,
                             progress: Callable[[str], None] = print) -> Path:
    """Generate each task's tiny checkpoint under ``checkpoints`` and export it into
    ``repository``; what already exists (a checkpoint, a task's public model) is kept, so a
    second call costs nothing. Returns the repository."""
    from .export import export_repository
    from .tiny_checkpoint import generate_tiny_checkpoint

    repository, checkpoints = Path(repository), Path(checkpoints)
    for task, arguments in BUILTIN_CHECKPOINTS.items():
        if (repository / TASKS[task].public_model / "config.pbtxt").is_file():
            continue
        checkpoint = checkpoints / f"tiny-{task}"
        if not (checkpoint / "GENERATED.json").is_file():
            progress(f"generating the tiny {task} checkpoint (random weights) in {checkpoint}")
            generate_tiny_checkpoint(checkpoint, **arguments)
        export_repository(checkpoint, repository, progress=progress)
    return repository
