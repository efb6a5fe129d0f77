"""Answer words to entailment labels, and scores to the public outputs.

The checkpoint's answer map decides which answers exist and their order (the order of the
graph's scores). OFA's SNLI-VE recipe trains the answers yes / no / maybe for entailment /
contradiction / neutral; that meaning is fixed here, in one place.
"""

from __future__ import annotations

import numpy as np

# ModelScope's SNLI-VE answer map (answer2label.json); used when a checkpoint names none.
DEFAULT_ANSWER_MAP = {"no": 0, "yes": 1, "maybe": 2}

ANSWER_TO_LABEL = {"yes": "entailment", "no": "contradiction", "maybe": "neutral"}

# The public output order of `probabilities`.
LABELS = ("entailment", "contradiction", "neutral")


def label_order(answers: tuple[str, ...] | list[str]) -> np.ndarray:
    """Indices into the answer-ordered scores that give the LABELS order."""
    unknown = [a for a in answers if a not in ANSWER_TO_LABEL]
    if unknown or sorted(ANSWER_TO_LABEL[a] for a in answers) != sorted(LABELS):
        raise ValueError(f"the answer map {list(answers)} does not name exactly the answers "
                         f"{sorted(ANSWER_TO_LABEL)} that visual entailment needs")
    by_label = {ANSWER_TO_LABEL[a]: i for i, a in enumerate(answers)}
    return np.asarray([by_label[label] for label in LABELS], dtype=np.int64)


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def scores_to_outputs(answer_scores: np.ndarray, answers: tuple[str, ...] | list[str]
                      ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """answer_scores [B, A] (log-softmax, answer-map order) ->
    labels [B], confidence [B] (ModelScope's score: the winning probability),
    probabilities [B, 3] in LABELS order."""
    order = label_order(answers)
    by_answer = softmax(answer_scores.astype(np.float32))
    # argmax in answer-map order, as ModelScope's, so that ties resolve the same way.
    winner = by_answer.argmax(axis=-1)
    labels = [ANSWER_TO_LABEL[answers[i]] for i in winner]
    confidence = by_answer[np.arange(len(winner)), winner]
    return labels, confidence.astype(np.float32), by_answer[:, order].astype(np.float32)
