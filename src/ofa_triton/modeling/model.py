"""The export-ready OFA visual-entailment scorer.

Tensors in, tensors out: ``(input_ids, patch_images, decoder_input_ids) -> answer_scores``.

ModelScope's traverse inference appends each answer to the decoder prompt, masks the logits so
that only the answers' first tokens (then only eos) are allowed, and sums the log-probabilities.
Each OFA answer (`` yes``, `` no``, `` maybe``) is one BPE token and the step after it allows
only eos (log-probability exactly 0), so the sum equals a log-softmax over the answers' logits
at the last decoder-prompt position. That is what this module computes: one encoder pass and
one decoder pass over the prompt, and only the answers' rows of the output projection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..tensor_names import SCORER_INPUTS, SCORER_OUTPUTS
from .config import OfaArchitecture
from .decoder import OfaDecoder
from .encoder import OfaEncoder
from .positions import token_bucket_by_offset, verify_bucket_buffers


class CheckpointMismatchError(ValueError):
    """The state dict does not fit the architecture its config.json describes."""


class OfaModel(nn.Module):
    """OFA's encoder and decoder with ModelScope's parameter names, so that a checkpoint's
    state dict loads unchanged; each task's module adds what it computes from them."""

    def __init__(self, arch: OfaArchitecture):
        super().__init__()
        self.arch = arch
        shared = nn.Embedding(arch.vocab_size, arch.d_model, arch.pad_token_id)
        self.encoder = OfaEncoder(arch, shared)
        self.decoder = OfaDecoder(arch, shared)
        if not arch.exclude_mlp:
            self.mlp_head = nn.Linear(arch.d_model, arch.mlp_dim)
        if arch.temperature_init_value:
            self.temp = nn.Parameter(torch.ones([]) * arch.temperature_init_value)

    def load_checkpoint(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load a ModelScope/OFA-Sys state dict unchanged; list every missing, unexpected or
        mis-shaped tensor in one error."""
        own = self.state_dict()
        state_dict = self._fill_tied_aliases(own, state_dict)
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        mismatched = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} != model {tuple(v.shape)}"
                            for k, v in own.items()
                            if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape))
        if missing or unexpected or mismatched:
            parts = []
            for title, names in (("missing", missing), ("unexpected", unexpected),
                                 ("shape mismatch", mismatched)):
                if names:
                    parts.append(f"{len(names)} {title}: " + ", ".join(names))
            raise CheckpointMismatchError(
                "the checkpoint's tensors do not match its config.json "
                f"(d_model={self.arch.d_model}, encoder_layers={self.arch.encoder_layers}, "
                f"decoder_layers={self.arch.decoder_layers}, resnet_type={self.arch.resnet_type}): "
                + "; ".join(parts))
        with torch.no_grad():
            for name, value in own.items():
                value.copy_(state_dict[name].to(value.dtype))
        for side in (self.encoder, self.decoder):
            side.token_bucket_by_offset = token_bucket_by_offset(side.token_rp_bucket)
        verify_bucket_buffers(self.encoder.token_rp_bucket, self.encoder.image_rp_bucket,
                              self.arch.image_bucket_size, "encoder")
        verify_bucket_buffers(self.decoder.token_rp_bucket, self.decoder.image_rp_bucket,
                              self.arch.image_bucket_size, "decoder")

    @staticmethod
    def _fill_tied_aliases(own: Mapping[str, Tensor],
                           state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Safetensors checkpoints store a tied tensor once (the shared token embedding is
        encoder.embed_tokens, decoder.embed_tokens and decoder.output_projection); fill the
        other names from the one present."""
        filled = dict(state_dict)
        groups: dict[int, list[str]] = {}
        for name, value in own.items():
            groups.setdefault(value.data_ptr(), []).append(name)
        for names in groups.values():
            present = [n for n in names if n in filled]
            if present and len(present) < len(names):
                for n in names:
                    filled.setdefault(n, filled[present[0]])
        return filled



class OfaVisualEntailmentModel(OfaModel):
    # Input and output names of the exported graph; the Triton models use the same names
    # (tensor_names.py).
    INPUT_NAMES = SCORER_INPUTS
    OUTPUT_NAMES = SCORER_OUTPUTS

    def __init__(self, arch: OfaArchitecture, answer_token_ids: Sequence[int]):
        super().__init__(arch)
        self.register_buffer("answer_token_ids", torch.tensor(list(answer_token_ids),
                                                              dtype=torch.long),
                             persistent=False)
        self.eval()

    def forward(self, input_ids: Tensor, patch_images: Tensor, decoder_input_ids: Tensor) -> Tensor:
        """input_ids [B, L] int64, right-padded with pad_token_id;
        patch_images [B, 3, H, W] float, normalized;
        decoder_input_ids [B, T] int64, right-padded with pad_token_id.
        Returns answer_scores [B, A]: log-softmax over the answers, in answer-map order."""
        # Inputs stay fp32 in every precision; the weights' dtype decides the arithmetic.
        patch_images = patch_images.to(self.encoder.image_proj.weight.dtype)
        encoder_out, encoder_padding_mask, encoder_pos_embed = self.encoder(input_ids, patch_images)
        hidden = self.decoder(decoder_input_ids, encoder_out, encoder_padding_mask,
                              encoder_pos_embed)
        # Last non-pad position of each decoder prompt. Right padding cannot change it: the
        # causal mask hides later positions.
        positions = torch.arange(decoder_input_ids.shape[1], device=decoder_input_ids.device)
        last = (positions * decoder_input_ids.ne(self.arch.pad_token_id)).amax(dim=1)
        last_hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B, D]
        answer_weights = self.decoder.output_projection.weight[self.answer_token_ids]   # [A, D]
        logits = torch.matmul(last_hidden, answer_weights.t()).float()
        return torch.log_softmax(logits, dim=-1)
