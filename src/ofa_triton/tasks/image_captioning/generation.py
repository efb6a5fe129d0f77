"""Captions as ModelScope's OfaForAllTasks makes them: the prompt, beam search over the cached
decoder, the best hypothesis decoded and its punctuation removed (English)."""

from __future__ import annotations


import numpy as np
import torch

from ...beam_search import GenerationSettings, Hypothesis, SpecialTokens, beam_search
from ...modeling.generation import CachedDecoding, OfaGenerationModel
from ...text import OfaTextEncoder
from . import caption_length



def special_tokens(text: OfaTextEncoder) -> SpecialTokens:
    return SpecialTokens(bos=text.bos_id, pad=text.pad_id, eos=text.eos_id,
                         unk=text.tokenizer.token_to_id("<unk>"))


def caption_tokens(hypotheses: list[list[Hypothesis]], settings, pad_token_id: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Each request's best hypothesis as a fixed-width row of token ids (pad after eos), and
    its score: the generator's outputs."""
    width = caption_length(settings)
    tokens = np.full((len(hypotheses), width), pad_token_id, dtype=np.int64)
    scores = np.zeros(len(hypotheses), dtype=np.float32)
    for row, sentence in enumerate(hypotheses):
        best = sentence[0]
        tokens[row, :len(best.tokens)] = best.tokens
        scores[row] = best.score
    return tokens, scores


def generate(model: OfaGenerationModel, input_ids: torch.Tensor, patch_images: torch.Tensor,
             settings: GenerationSettings, special: SpecialTokens) -> list[list[Hypothesis]]:
    """Beam search for a batch of requests, all through one decoder step per position."""
    source_length = input_ids.shape[1]
    max_len = settings.max_len(source_length)
    with torch.inference_mode():
        cache = model.start(input_ids, patch_images, max_len + 1)
        decoding = CachedDecoding(model, cache, settings.temperature, settings.allowed)
        return beam_search(decoding, input_ids.shape[0], source_length, settings, special,
                           model.arch.vocab_size, device=input_ids.device)
