"""Settings that travel from the export to the Triton Python models (no torch here: the
preprocessing and postprocessing models import this)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .limits import InputLimits

SETTINGS_FILE = "ofa_settings.json"


@dataclasses.dataclass(frozen=True)
class TaskSettings:
    """Everything preprocessing and postprocessing need, besides the vocabulary files."""

    patch_image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_src_length: int
    prompt_type: str
    hypothesis_prompt: str
    premise_prompt: str
    # Answer words in answer-map order; the graph's scores come in this order.
    answers: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TaskSettings":
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        for key in ("mean", "std", "answers"):
            values[key] = tuple(values[key])
        return cls(**values)



@dataclasses.dataclass(frozen=True)
class ServingSettings:
    """What the Triton Python models need, written next to them as ofa_settings.json."""

    task: TaskSettings
    bos_token_id: int
    pad_token_id: int
    eos_token_id: int
    answer_token_ids: tuple[int, ...]
    # What a request may carry; set at export (settings files without it get the defaults).
    limits: InputLimits = InputLimits()

    def to_dict(self) -> dict[str, Any]:
        return {**self.task.to_dict(), "bos_token_id": self.bos_token_id,
                "pad_token_id": self.pad_token_id, "eos_token_id": self.eos_token_id,
                "answer_token_ids": list(self.answer_token_ids),
                "limits": self.limits.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServingSettings":
        return cls(task=TaskSettings.from_dict(data), bos_token_id=data["bos_token_id"],
                   pad_token_id=data["pad_token_id"], eos_token_id=data["eos_token_id"],
                   answer_token_ids=tuple(data["answer_token_ids"]),
                   limits=InputLimits.from_dict(data.get("limits")))

    def write(self, directory: Path) -> Path:
        path = directory / SETTINGS_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        return path

    @classmethod
    def read(cls, directory: Path) -> "ServingSettings":
        return cls.from_dict(json.loads((directory / SETTINGS_FILE).read_text(encoding="utf-8")))
