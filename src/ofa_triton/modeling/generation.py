"""OFA for generation (captioning; VQA and grounding build on it): the encoder once, then the
decoder one token per step with a key/value cache, giving each step's log-probabilities.

Tensors in, tensors out, so that the encoder and the step export as graphs (the step reads and
returns the cache, of a fixed length, instead of growing it): ``encode`` -> ``start`` ->
``step`` ... The search around the steps is ``ofa_triton.generation``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import OfaArchitecture
from .decoder import DecoderCache
from .model import OfaModel


class OfaGenerationModel(OfaModel):
    def __init__(self, arch: OfaArchitecture):
        super().__init__(arch)
        self.eval()

    def encode(self, input_ids: Tensor, patch_images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The encoder's hidden states [B, S, D], padding mask [B, S] and position embedding
        [1, S, D]."""
        patch_images = patch_images.to(self.encoder.image_proj.weight.dtype)
        return self.encoder(input_ids, patch_images)

    def start(self, input_ids: Tensor, patch_images: Tensor, max_len: int) -> DecoderCache:
        """Encode and prepare the decoder for ``max_len`` positions."""
        encoder_out, padding_mask, pos_embed = self.encode(input_ids, patch_images)
        return self.decoder.start(encoder_out, padding_mask, pos_embed, max_len)

    def step(self, tokens: Tensor, at: Tensor, cache: DecoderCache,
             temperature: float = 1.0, allowed: tuple[int, int] | None = None
             ) -> tuple[Tensor, DecoderCache]:
        """tokens [N] at position ``at`` -> log-probabilities [N, V] (float32) of the next
        token, and the updated cache. As ModelScope's EnsembleModel.forward_decoder: logits
        over the whole vocabulary divided by the temperature, ``allowed`` (constraint_range:
        ids below 4 stay allowed) masking the others before the log-softmax."""
        hidden, cache = self.decoder.step(tokens, at, cache)
        logits = self.decoder.output_projection(hidden)
        if temperature != 1.0:
            logits = logits / temperature
        if allowed is not None:
            start, end = allowed
            logits[:, 4:start] = -torch.inf
            logits[:, end:] = -torch.inf
        return F.log_softmax(logits.float(), dim=-1), cache


class CachedDecoding:
    """A StepDecoder (ofa_triton.generation.beam_search) over OfaGenerationModel: the cache follows the
    hypotheses the search keeps."""

    def __init__(self, model: OfaGenerationModel, cache: DecoderCache, temperature: float = 1.0,
                 allowed: tuple[int, int] | None = None):
        self.model, self.cache = model, cache
        self.temperature, self.allowed = temperature, allowed
        self._positions = torch.arange(cache.self_k.shape[3], device=cache.self_k.device)

    def step(self, tokens: Tensor, at: int) -> Tensor:
        log_probs, self.cache = self.model.step(tokens, self._positions[at:at + 1], self.cache,
                                                self.temperature, self.allowed)
        return log_probs

    def fork(self) -> "CachedDecoding":
        """A decoder with the same cache that reorders and steps on its own (reorder copies
        the cache before any step writes to it)."""
        twin = CachedDecoding.__new__(CachedDecoding)
        twin.__dict__.update(self.__dict__)
        return twin

    def reorder(self, rows: Tensor) -> None:
        self.cache = self.cache.reorder(rows)
