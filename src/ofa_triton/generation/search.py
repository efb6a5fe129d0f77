"""Beam search over the PyTorch generation module, and the generator's fixed-width outputs."""

from __future__ import annotations

import numpy as np
import torch

from ..modeling.generation import CachedDecoding, OfaGenerationModel
from ..text import OfaTextEncoder
from .beam_search import GenerationSettings, Hypothesis, SpecialTokens, StepDecoder, beam_search


def special_tokens(text: OfaTextEncoder) -> SpecialTokens:
    return SpecialTokens(bos=text.bos_id, pad=text.pad_id, eos=text.eos_id,
                         unk=text.tokenizer.token_to_id("<unk>"))


def best_tokens(hypotheses: list[list[Hypothesis]], width: int, pad_token_id: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Each request's best hypothesis as a fixed-width row of token ids (pad after eos), and
    its score: the generator's outputs."""
    tokens = np.full((len(hypotheses), width), pad_token_id, dtype=np.int64)
    scores = np.zeros(len(hypotheses), dtype=np.float32)
    for row, sentence in enumerate(hypotheses):
        best = sentence[0]
        tokens[row, :len(best.tokens)] = best.tokens
        scores[row] = best.score
    return tokens, scores


def cached_decoding(model: OfaGenerationModel, input_ids: torch.Tensor,
                    patch_images: torch.Tensor, settings: GenerationSettings) -> CachedDecoding:
    """The encoder run once, the decoder ready for the longest output."""
    max_len = settings.max_len(input_ids.shape[1])
    cache = model.start(input_ids, patch_images, max_len + 1)
    return CachedDecoding(model, cache, settings.temperature, settings.allowed)


def generate(model: OfaGenerationModel, input_ids: torch.Tensor, patch_images: torch.Tensor,
             settings: GenerationSettings, special: SpecialTokens,
             constrain=None) -> list[list[Hypothesis]]:
    """Beam search for a batch of requests, all through one decoder step per position;
    ``constrain`` (an AnswerTrie) limits the outputs to its answers."""
    with torch.inference_mode():
        decoding: StepDecoder = cached_decoding(model, input_ids, patch_images, settings)
        if constrain is not None:
            decoding = constrain.decoding(decoding)
        return beam_search(decoding, input_ids.shape[0], input_ids.shape[1], settings, special,
                           model.arch.vocab_size, device=input_ids.device)
