"""Beam search as ModelScope's OFA runs it (``modelscope/models/multi_modal/ofa/generate/
sequence_generator.py``, fairseq's SequenceGenerator), for every task that generates.

The same arithmetic, step for step, so that the finished hypotheses, their order and their
scores are ModelScope's: at each step the top 2 x beam candidates over beam x vocabulary of the
cumulative log-probabilities; candidates ending in eos among the first ``beam`` finish (score
divided by length ** len_penalty); the first ``beam`` that do not continue; a request is done
when it has ``beam`` finished hypotheses or reaches the maximum length, and leaves the batch.
eos is banned before ``min_len`` and allowed alone at ``max_len``; pad is never chosen;
n-grams of ``no_repeat_ngram_size`` are not repeated.

The model side is a ``StepDecoder``: ``step(tokens, at)`` gives the next token's
log-probabilities of every live hypothesis, ``reorder(rows)`` keeps, repeats and drops
hypotheses. Every request of a batch goes through one step call.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import Tensor


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """configuration.json's ``model.beam_search`` with ModelScope's defaults
    (OfaForAllTasks: beam 5, max_len_b 16, min_len 1, no_repeat_ngram_size 3)."""

    beam_size: int = 5
    max_len_a: float = 0.0
    max_len_b: int = 16
    min_len: int = 1
    no_repeat_ngram_size: int = 3
    len_penalty: float = 1.0
    normalize_scores: bool = True
    unk_penalty: float = 0.0
    temperature: float = 1.0
    # "start,end": only ids in [start, end) (and the 4 special ids) may be generated.
    constraint_range: str | None = None

    @classmethod
    def from_configuration(cls, beam_search: Mapping[str, Any] | None) -> "GenerationSettings":
        known = {field.name for field in dataclasses.fields(cls)}
        given = dict(beam_search or {})
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"beam_search settings {unknown} are not supported (supported: "
                             f"{sorted(known)})")
        return cls(**given)

    def max_len(self, source_length: int) -> int:
        """ModelScope's int(max_len_a * src_len + max_len_b), src_len the padded source width."""
        return int(self.max_len_a * source_length + self.max_len_b)

    @property
    def allowed(self) -> tuple[int, int] | None:
        if self.constraint_range is None:
            return None
        start, end = (int(part) for part in self.constraint_range.split(","))
        return start, end


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    bos: int
    pad: int
    eos: int
    unk: int


@dataclasses.dataclass
class Hypothesis:
    tokens: list[int]       # without bos, ending with eos
    score: float            # normalized as ModelScope's


class StepDecoder(Protocol):
    def step(self, tokens: Tensor, at: int) -> Tensor:
        """tokens [N] at position ``at`` -> log-probabilities [N, V] of the next token."""

    def reorder(self, rows: Tensor) -> None:
        """Keep the hypotheses ``rows`` (indices into the current ones, repeats allowed)."""


def _banned_ngrams(tokens: list[list[int]], step: int, size: int) -> list[list[int]]:
    """fairseq's NGramRepeatBlock._no_repeat_ngram: per row, the tokens that would repeat an
    n-gram of ``tokens`` (bos and the first step + 1 generated tokens)."""
    banned = []
    for row in tokens:
        if step + 2 - size < 0:
            banned.append([])
            continue
        seen: dict[tuple[int, ...], list[int]] = {}
        for start in range(len(row) - size + 1):
            ngram = row[start:start + size]
            seen.setdefault(tuple(ngram[:-1]), []).append(ngram[-1])
        banned.append(seen.get(tuple(row[step + 2 - size:step + 1]), []))
    return banned


def beam_search(decoder: StepDecoder, batch: int, source_length: int,
                settings: GenerationSettings, special: SpecialTokens, vocab_size: int,
                device: torch.device | str = "cpu") -> list[list[Hypothesis]]:
    """The finished hypotheses of each of ``batch`` requests, best first. ``decoder`` holds one
    row per request; it is reordered to beam rows first."""
    beam = min(settings.beam_size, vocab_size - 1)
    max_len = settings.max_len(source_length)
    if settings.min_len > max_len:
        raise ValueError(f"min_len {settings.min_len} is larger than the maximum length "
                         f"{max_len}")
    bsz = batch
    decoder.reorder(torch.arange(bsz, device=device).repeat_interleave(beam))
    scores = torch.zeros(bsz * beam, max_len + 1, device=device)
    tokens = torch.full((bsz * beam, max_len + 2), special.pad, dtype=torch.long, device=device)
    tokens[:, 0] = special.bos
    cands_to_ignore = torch.zeros(bsz, beam, dtype=torch.bool, device=device)
    finalized: list[list[Hypothesis]] = [[] for _ in range(batch)]
    finished = [False] * batch
    remaining = batch
    cand_size = 2 * beam
    bbsz_offsets = (torch.arange(bsz, device=device) * beam).unsqueeze(1)
    cand_offsets = torch.arange(cand_size, device=device)
    reorder_state: Tensor | None = None
    batch_idxs: Tensor | None = None

    for step in range(max_len + 1):   # one extra step for eos
        if reorder_state is not None:
            if batch_idxs is not None:
                # Account for the sentences removed from the batch.
                corr = batch_idxs - torch.arange(batch_idxs.numel(), device=device)
                reorder_state.view(-1, beam).add_(corr.unsqueeze(-1) * beam)
            decoder.reorder(reorder_state)
        # (constraint_range is the decoder's: ModelScope masks the logits, before the softmax.)
        lprobs = decoder.step(tokens[:, step], step)
        if step < settings.min_len:
            lprobs[:, special.eos] = -math.inf
        lprobs[lprobs != lprobs] = -math.inf
        lprobs[:, special.pad] = -math.inf
        lprobs[:, special.unk] -= settings.unk_penalty
        if step >= max_len:
            lprobs[:, :special.eos] = -math.inf
            lprobs[:, special.eos + 1:] = -math.inf
        scores = scores.type_as(lprobs)
        if settings.no_repeat_ngram_size > 0:
            rows = tokens[:, :step + 1].tolist()
            for row, banned in enumerate(_banned_ngrams(rows, step,
                                                        settings.no_repeat_ngram_size)):
                if banned:
                    lprobs[row, torch.tensor(banned, dtype=torch.long)] = -math.inf

        # BeamSearch.step: the top 2 x beam over beam x vocabulary.
        cand = lprobs.view(bsz, beam, vocab_size)
        if step == 0:
            cand = cand[:, ::beam, :].contiguous()   # all beams are the same: use the first
        else:
            cand = cand + scores.view(bsz, beam, -1)[:, :, step - 1].unsqueeze(-1)
        flat = cand.view(bsz, -1)
        cand_scores, cand_indices = torch.topk(flat, k=min(cand_size, flat.size(1) - 1))
        cand_beams = torch.div(cand_indices, vocab_size, rounding_mode="floor")
        cand_indices = cand_indices.fmod(vocab_size)
        cand_bbsz_idx = cand_beams.add(bbsz_offsets)

        eos_mask = cand_indices.eq(special.eos) & cand_scores.ne(-math.inf)
        eos_mask[:, :beam][cands_to_ignore] = False
        eos_bbsz_idx = torch.masked_select(cand_bbsz_idx[:, :beam], mask=eos_mask[:, :beam])
        finalized_sents: list[int] = []
        if eos_bbsz_idx.numel() > 0:
            eos_scores = torch.masked_select(cand_scores[:, :beam], mask=eos_mask[:, :beam])
            finalized_sents = _finalize(step, eos_bbsz_idx, eos_scores, tokens, scores,
                                        finalized, finished, beam, max_len, settings, special)
            remaining -= len(finalized_sents)
        if remaining == 0 or step >= max_len:
            break

        if finalized_sents:
            new_bsz = bsz - len(finalized_sents)
            batch_mask = torch.ones(bsz, dtype=torch.bool, device=device)
            batch_mask[finalized_sents] = False
            batch_idxs = torch.arange(bsz, device=device).masked_select(batch_mask)
            eos_mask = eos_mask[batch_idxs]
            cand_beams = cand_beams[batch_idxs]
            bbsz_offsets = (torch.arange(new_bsz, device=device) * beam).unsqueeze(1)
            cand_bbsz_idx = cand_beams.add(bbsz_offsets)
            cand_scores = cand_scores[batch_idxs]
            cand_indices = cand_indices[batch_idxs]
            cands_to_ignore = cands_to_ignore[batch_idxs]
            scores = scores.view(bsz, -1)[batch_idxs].view(new_bsz * beam, -1)
            tokens = tokens.view(bsz, -1)[batch_idxs].view(new_bsz * beam, -1)
            bsz = new_bsz
        else:
            batch_idxs = None

        # The first beam candidates that do not end in eos continue.
        eos_mask[:, :beam] = ~((~cands_to_ignore) & (~eos_mask[:, :beam]))
        active_mask = torch.add(eos_mask.type_as(cand_offsets) * cand_size,
                                cand_offsets[:eos_mask.size(1)])
        new_cands_to_ignore, active_hypos = torch.topk(active_mask, k=beam, dim=1,
                                                       largest=False)
        cands_to_ignore = new_cands_to_ignore.ge(cand_size)[:, :beam]
        active_bbsz_idx = torch.gather(cand_bbsz_idx, dim=1, index=active_hypos).view(-1)
        active_scores = torch.gather(cand_scores, dim=1, index=active_hypos).view(-1)
        tokens[:, :step + 1] = torch.index_select(tokens[:, :step + 1], dim=0,
                                                  index=active_bbsz_idx)
        tokens.view(bsz, beam, -1)[:, :, step + 1] = torch.gather(cand_indices, dim=1,
                                                                  index=active_hypos)
        if step > 0:
            scores[:, :step] = torch.index_select(scores[:, :step], dim=0,
                                                  index=active_bbsz_idx)
        scores.view(bsz, beam, -1)[:, :, step] = active_scores.view(bsz, beam)
        reorder_state = active_bbsz_idx

    for sentence in finalized:
        # Stable, as torch.sort on the CPU in ModelScope for these few items.
        sentence.sort(key=lambda hypothesis: -hypothesis.score)
    return finalized


def _finalize(step: int, bbsz_idx: Tensor, eos_scores: Tensor, tokens: Tensor, scores: Tensor,
              finalized: list[list[Hypothesis]], finished: list[bool], beam: int, max_len: int,
              settings: GenerationSettings, special: SpecialTokens) -> list[int]:
    """SequenceGenerator.finalize_hypos: record the hypotheses ending in eos; return the
    indices (in the current batch) of the requests that are now done."""
    tokens_clone = tokens.index_select(0, bbsz_idx)[:, 1:step + 2]
    tokens_clone[:, step] = special.eos
    if settings.normalize_scores:
        eos_scores = eos_scores / (step + 1) ** settings.len_penalty
    cum_unfin: list[int] = []
    previous = 0
    for done in finished:
        if done:
            previous += 1
        else:
            cum_unfin.append(previous)
    cum_fin = torch.tensor(cum_unfin, dtype=torch.long, device=bbsz_idx.device)
    unfin_idx = torch.div(bbsz_idx, beam, rounding_mode="floor")
    sent = unfin_idx + torch.index_select(cum_fin, 0, unfin_idx)
    seen = torch.unique((sent << 32) + unfin_idx).tolist()
    for i, sentence in enumerate(sent.tolist()):
        if len(finalized[sentence]) < beam:
            finalized[sentence].append(Hypothesis(tokens_clone[i].tolist(),
                                                  float(eos_scores[i])))
    newly_finished = []
    for key in seen:
        sentence, unfinished = key >> 32, key - ((key >> 32) << 32)
        if not finished[sentence] and (len(finalized[sentence]) == beam or step == max_len):
            finished[sentence] = True
            newly_finished.append(unfinished)
    return newly_finished
