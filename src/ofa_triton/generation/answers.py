"""A checkpoint's answer list (configuration.json's ``answer2label``), used as ModelScope's
OfaForAllTasks uses it:

- ``gen_type: generation``: a trie of the answers constrains the beam search. At each step a
  hypothesis may only continue along the trie (``[bos] + answer + [eos]``); a prefix off the
  trie may only end (eos). ModelScope masks the logits before the log-softmax, so the allowed
  tokens' log-probabilities are renormalized over the allowed set (``TrieDecoding``).
- ``gen_type: traverse``: every answer is scored under the same masks, teacher-forced after the
  decoder prompt, and the best one wins; the score is its softmax over all answers
  (``score_answers``).

Both run over any StepDecoder (beam_search.py): the PyTorch module or the ONNX graphs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .beam_search import StepDecoder

# Answers teacher-forced together per request: bounds the rows (each with its own copy of the
# encoder's keys and values) that one decoder step holds.
ANSWER_CHUNK = 256


class AnswerTrie:
    """ModelScope's utils.trie.Trie over ``[bos] + answer ids + [eos]``."""

    def __init__(self, answers: Sequence[Sequence[int]], bos: int, eos: int):
        self.bos, self.eos = bos, eos
        self.root: dict = {}
        for ids in answers:
            node = self.root
            for token in (bos, *ids, eos):
                node = node.setdefault(token, {})

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Trie.get_next_layer: the children of ``prefix``, or [eos] off the trie."""
        node = self.root
        for token in prefix:
            node = node.get(token)
            if node is None:
                return [self.eos]
        return list(node)

    def decoding(self, decoder: StepDecoder) -> "TrieDecoding":
        return TrieDecoding(decoder, self)


def renormalize(log_probs: Tensor, allowed: list[list[int]]) -> Tensor:
    """log_softmax over each row's allowed tokens only (the others -inf): ModelScope's
    masked_fill(-inf) on the logits, then log_softmax. A row with nothing allowed is all -inf
    (ModelScope's NaN, which its beam search turns into -inf)."""
    mask = torch.zeros_like(log_probs, dtype=torch.bool)
    for row, tokens in enumerate(allowed):
        if tokens:
            mask[row, tokens] = True
    masked = log_probs.masked_fill(~mask, -math.inf)
    normalizer = torch.logsumexp(masked, dim=-1, keepdim=True)
    return torch.where(mask, masked - normalizer, torch.full_like(masked, -math.inf))


class TrieDecoding:
    """A StepDecoder that constrains another to a trie's answers. It follows each hypothesis'
    prefix (as ModelScope's forward_decoder: bos, then the tokens the search fed)."""

    def __init__(self, decoder: StepDecoder, trie: AnswerTrie):
        self.decoder, self.trie = decoder, trie
        self.prefixes: list[list[int]] = []

    def step(self, tokens: Tensor, at: int) -> Tensor:
        fed = tokens.tolist()
        if at == 0:
            self.prefixes = [[self.trie.bos] for _ in fed]
        else:
            self.prefixes = [prefix + [token] for prefix, token in zip(self.prefixes, fed)]
        log_probs = self.decoder.step(tokens, at)
        return renormalize(log_probs, [self.trie.next_tokens(p) for p in self.prefixes])

    def reorder(self, rows: Tensor) -> None:
        self.decoder.reorder(rows)
        if self.prefixes:
            self.prefixes = [self.prefixes[i] for i in rows.tolist()]


def score_answers(decoder, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
                  trie: AnswerTrie, pad: int) -> np.ndarray:
    """ModelScope's _traverse_inference for requests whose decoder prompts (one per request)
    are of one length: [requests, answers] sums of masked log-probabilities of each answer and
    its eos. ``decoder`` holds one row per request and must offer ``fork()``; the prompt
    positions score 0, as in ModelScope."""
    requests, prompt_length = len(prompts), len(prompts[0])
    scores = np.zeros((requests, len(answers)), dtype=np.float32)
    for first in range(0, len(answers), ANSWER_CHUNK):
        chunk = answers[first:first + ANSWER_CHUNK]
        width = max(len(a) for a in chunk)
        # Each row: the prompt, then the answer (padded: what follows an answer's eos is
        # never read back, the decoder being causal).
        fed = torch.tensor([[*prompt, *a, *[pad] * (width - len(a))]
                            for prompt in prompts for a in chunk])
        fork = decoder.fork()
        fork.reorder(torch.arange(requests).repeat_interleave(len(chunk)))
        total = torch.zeros(requests * len(chunk), dtype=torch.float32)
        for at in range(prompt_length + width):
            log_probs = fork.step(fed[:, at], at)
            j = at - prompt_length + 1          # the answer token this step predicts
            if j < 0:
                continue
            # What this step predicts for each answer of the chunk, the same for every
            # request: its target, the trie's allowed tokens, and whether it is still live.
            per_answer = [(a[j] if j < len(a) else trie.eos,
                           trie.next_tokens([trie.bos, *a[:j]]), True) if j <= len(a)
                          else (pad, [], False) for a in chunk]
            targets, allowed, live = (list(column) * requests for column in zip(*per_answer))
            picked = renormalize(log_probs.float(), allowed).gather(
                1, torch.tensor(targets)[:, None])[:, 0]
            total += torch.where(torch.tensor(live), picked, torch.zeros_like(picked))
        scores[:, first:first + len(chunk)] = total.view(requests, len(chunk)).numpy()
    return scores


def softmax_choice(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ModelScope's argmax over the answers (the first on ties) and its softmax probability."""
    shifted = scores - scores.max(axis=-1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    best = scores.argmax(axis=-1)
    return best, probabilities[np.arange(len(best)), best].astype(np.float32)
