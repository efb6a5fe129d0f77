"""OFA's tasks, one export config each (tasks/base.py). A new task is its folder here, its
templates under model_repository/, and one line below."""

from __future__ import annotations

from .base import OfaTask, TaskSettings
from .image_captioning import ImageCaptioning
from .visual_entailment import VisualEntailment
from .visual_grounding import VisualGrounding
from .visual_question_answering import VisualQuestionAnswering

TASKS: dict[str, OfaTask] = {task.name: task for task in (
    VisualEntailment(),
    ImageCaptioning(),
    VisualQuestionAnswering(),
    VisualGrounding(),
)}
DEFAULT_TASK = "visual-entailment"


class UnknownTaskError(ValueError):
    """A task this exporter does not serve."""


def task_named(name: str | None) -> OfaTask:
    """The task of configuration.json's ``task`` (any of its spellings), ``--task``, or a
    settings file's record; None means the default (checkpoints without configuration.json)."""
    wanted = (name or DEFAULT_TASK).strip()
    for task in TASKS.values():
        if wanted in (task.name, *task.aliases):
            return task
    raise UnknownTaskError(f"task {wanted!r} is not one this exporter serves (it serves "
                           f"{', '.join(TASKS)}); pass --task to choose one")


__all__ = ["DEFAULT_TASK", "OfaTask", "TASKS", "TaskSettings", "UnknownTaskError", "task_named"]
