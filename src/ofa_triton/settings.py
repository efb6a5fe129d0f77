"""Settings that travel from the export to the Triton Python models (no torch here: the
preprocessing and postprocessing models import this)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .limits import InputLimits
from .tasks import DEFAULT_TASK, TaskSettings, task_named

SETTINGS_FILE = "ofa_settings.json"


@dataclasses.dataclass(frozen=True)
class ServingSettings:
    """What the Triton Python models need, written next to them as ofa_settings.json."""

    task: TaskSettings          # the task's own settings class (tasks/<task>/)
    bos_token_id: int
    pad_token_id: int
    eos_token_id: int
    # Visual entailment's scorer reads only these rows of the output projection.
    answer_token_ids: tuple[int, ...] = ()
    # What a request may carry; set at export (settings files without it get the defaults).
    limits: InputLimits = InputLimits()
    task_name: str = DEFAULT_TASK

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task_name, **self.task.to_dict(), "bos_token_id": self.bos_token_id,
                "pad_token_id": self.pad_token_id, "eos_token_id": self.eos_token_id,
                "answer_token_ids": list(self.answer_token_ids),
                "limits": self.limits.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServingSettings":
        # Exports made before tasks were recorded are visual entailment's.
        task = task_named(data.get("task", DEFAULT_TASK))
        return cls(task=task.settings_class.from_dict(data), bos_token_id=data["bos_token_id"],
                   pad_token_id=data["pad_token_id"], eos_token_id=data["eos_token_id"],
                   answer_token_ids=tuple(data.get("answer_token_ids", ())),
                   limits=InputLimits.from_dict(data.get("limits")), task_name=task.name)

    def write(self, directory: Path) -> Path:
        path = directory / SETTINGS_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        return path

    @classmethod
    def read(cls, directory: Path) -> "ServingSettings":
        return cls.from_dict(json.loads((directory / SETTINGS_FILE).read_text(encoding="utf-8")))
