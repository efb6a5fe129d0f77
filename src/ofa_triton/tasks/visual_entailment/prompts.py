"""Visual entailment's instruction text, as ModelScope's OfaVisualEntailmentPreprocessor
builds it (modelscope/preprocessors/ofa/visual_entailment.py)."""

from __future__ import annotations

import dataclasses

from ...text import pre_caption

# ModelScope's default prompts (cfg.model.prompt overrides them).
HYPOTHESIS_ONLY_PROMPT = ' does the image describe " {} "?'
PREMISE_HYPOTHESIS_PROMPT = ' can image and text1 " {} " imply text2 " {} "?'


@dataclasses.dataclass(frozen=True)
class PromptTemplates:
    hypothesis_only: str = HYPOTHESIS_ONLY_PROMPT
    premise_hypothesis: str = PREMISE_HYPOTHESIS_PROMPT


def build_prompt(hypothesis: str, premise: str | None, max_words: int,
                 templates: PromptTemplates = PromptTemplates()) -> str:
    """The instruction text. ``premise=None`` means the hypothesis-only prompt, as ModelScope
    does when ``text2`` is absent. (An empty premise string is a premise: ModelScope then uses
    the two-text prompt with an empty first text; callers decide which they mean.)"""
    hypothesis = pre_caption(hypothesis, max_words)
    if premise is None:
        return templates.hypothesis_only.format(hypothesis)
    return templates.premise_hypothesis.format(pre_caption(premise, max_words), hypothesis)
