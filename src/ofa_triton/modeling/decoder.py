"""OFA's decoder: one pass over a decoder prompt (``forward``, what traverse scoring runs), or
step by step with a key/value cache (``start`` and ``step``, what generation runs). No image
codes.

Follows ModelScope's ``OFADecoder.forward`` with ``code_masks=None``, without and with past
key/values. The image-code parameters (``embed_image_positions``,
``image_pos_ln``, ``code_layernorm_embedding``, ``image_rel_pos_table_list`` and the buffers)
exist so that the checkpoint loads unchanged; text-to-image generation would use them, the
tasks served here do not.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import OfaArchitecture
from .layers import OfaDecoderLayer, causal_attention_mask, padding_attention_mask
from .positions import (add_absolute_position_parameters, add_relative_position_tables,
                        token_relative_buckets)


def _decoder_image_position_idx(arch: OfaArchitecture) -> Tensor:
    """ModelScope's decoder ``image_position_idx`` buffer (image-code positions)."""
    window = arch.code_image_size // 8
    grid = torch.arange(window)[None, :].expand(window, window) + \
        torch.arange(window)[:, None] * arch.image_bucket_size + 1
    return torch.cat([torch.tensor([0]), grid.reshape(-1), torch.tensor([1024] * 768)])


class OfaDecoder(nn.Module):
    def __init__(self, arch: OfaArchitecture, embed_tokens: nn.Embedding):
        super().__init__()
        dim = arch.d_model
        heads = arch.decoder_attention_heads
        self.arch = arch
        self.num_heads = heads
        self.embed_tokens = embed_tokens
        self.layers = nn.ModuleList(OfaDecoderLayer(arch) for _ in range(arch.decoder_layers))
        self.layernorm_embedding = nn.LayerNorm(dim) if arch.layernorm_embedding else None
        add_absolute_position_parameters(self, arch, heads)
        self.self_pos_q_linear = nn.Linear(dim, dim)
        self.self_pos_k_linear = nn.Linear(dim, dim)
        self.cross_pos_q_linear = nn.Linear(dim, dim)
        self.cross_pos_k_linear = nn.Linear(dim, dim)
        self.code_layernorm_embedding = nn.LayerNorm(dim) if arch.code_layernorm_embedding else None
        self.layer_norm = nn.LayerNorm(dim) if arch.decoder_normalize_before else None
        if arch.share_decoder_input_output_embed:
            self.output_projection = nn.Linear(dim, arch.vocab_size, bias=False)
            self.output_projection.weight = embed_tokens.weight
        else:
            self.output_projection = nn.Linear(dim, arch.vocab_size, bias=False)
        self.register_buffer("image_position_idx", _decoder_image_position_idx(arch))
        add_relative_position_tables(self, arch, heads, arch.decoder_layers)

    def _abs_pos_bias(self, q_linear: nn.Linear, k_linear: nn.Linear, query_pos: Tensor,
                      key_pos: Tensor) -> Tensor:
        """[1, T, D] and [1, S, D] positions -> [1, H, T, S] bias (the same for every row)."""
        tgt_len, src_len = query_pos.shape[1], key_pos.shape[1]
        pos_q = q_linear(query_pos).reshape(1, tgt_len, self.num_heads, -1).transpose(1, 2)
        pos_k = k_linear(key_pos).reshape(1, src_len, self.num_heads, -1).transpose(1, 2)
        return torch.matmul(pos_q * self.pos_scaling, pos_k.transpose(2, 3))

    def forward(self, decoder_input_ids: Tensor, encoder_out: Tensor,
                encoder_padding_mask: Tensor, encoder_pos_embed: Tensor) -> Tensor:
        """Returns the final hidden states [B, T, D] (after the last layer norm, before the
        output projection)."""
        arch = self.arch
        tgt_len = decoder_input_ids.shape[1]
        positions = torch.arange(tgt_len, device=decoder_input_ids.device)
        tgt_pos_embed = self.embed_positions(positions)[None]       # [1, T, D]
        tgt_pos_normed = self.pos_ln(tgt_pos_embed)
        self_abs_pos_bias = self._abs_pos_bias(self.self_pos_q_linear, self.self_pos_k_linear,
                                               tgt_pos_normed, tgt_pos_normed)
        cross_abs_pos_bias = self._abs_pos_bias(self.cross_pos_q_linear, self.cross_pos_k_linear,
                                                tgt_pos_normed, encoder_pos_embed)

        x = arch.embed_scale * self.embed_tokens(decoder_input_ids)
        if arch.entangle_position_embedding and not arch.disable_entangle:
            x = x + tgt_pos_embed
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)

        causal_mask = causal_attention_mask(tgt_len, x.device, x.dtype)
        encoder_mask = padding_attention_mask(encoder_padding_mask, x.dtype)
        text_buckets = token_relative_buckets(tgt_len, self.token_bucket_by_offset)
        for index, layer in enumerate(self.layers):
            table = self.token_rel_pos_table_list[0 if arch.share_attn_bias else index].weight
            self_attn_bias = self_abs_pos_bias + F.embedding(text_buckets, table).permute(2, 0, 1)[None]
            x = layer(x, self_attn_bias, causal_mask, encoder_out, cross_abs_pos_bias,
                      encoder_mask)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return x

    # --- generation: a fixed-length key/value cache, one token per step ----------------------

    def position_tables(self, max_len: int, encoder_pos_embed: Tensor) -> tuple[Tensor, Tensor]:
        """The attention biases of every decoder position up to ``max_len``, computed once per
        generation: self-attention [L, 1, H, T, T] (absolute + relative + causal: row t masks
        the positions after t) and cross-attention [1, H, T, S]. ModelScope recomputes them
        over the whole prefix at every step and keeps the last row; the rows are the same."""
        arch = self.arch
        positions = torch.arange(max_len, device=encoder_pos_embed.device)
        tgt_pos_normed = self.pos_ln(self.embed_positions(positions)[None])
        self_abs = self._abs_pos_bias(self.self_pos_q_linear, self.self_pos_k_linear,
                                      tgt_pos_normed, tgt_pos_normed)
        cross = self._abs_pos_bias(self.cross_pos_q_linear, self.cross_pos_k_linear,
                                   tgt_pos_normed, encoder_pos_embed)
        buckets = token_relative_buckets(max_len, self.token_bucket_by_offset)
        causal = causal_attention_mask(max_len, positions.device, self_abs.dtype)
        tables = [self.token_rel_pos_table_list[0 if arch.share_attn_bias else index].weight
                  for index in range(len(self.layers))]
        self_bias = torch.stack([self_abs + F.embedding(buckets, table).permute(2, 0, 1)[None]
                                 + causal for table in tables])
        return self_bias, cross

    def start(self, encoder_out: Tensor, encoder_padding_mask: Tensor,
              encoder_pos_embed: Tensor, max_len: int) -> "DecoderCache":
        """The cache of a generation of at most ``max_len`` positions over ``encoder_out``
        [N, S, D]: the encoder's keys and values for every layer, computed once, and empty
        self-attention keys and values."""
        layers = len(self.layers)
        batch = encoder_out.shape[0]
        first = self.layers[0].self_attn
        cross = [layer.cross_attn.project_kv(encoder_out) for layer in self.layers]
        empty = encoder_out.new_zeros(layers, batch, first.num_heads, max_len, first.head_dim)
        self_bias, cross_bias = self.position_tables(max_len, encoder_pos_embed)
        return DecoderCache(
            self_k=empty, self_v=empty.clone(),
            cross_k=torch.stack([k for k, _ in cross]), cross_v=torch.stack([v for _, v in cross]),
            encoder_mask=padding_attention_mask(encoder_padding_mask, encoder_out.dtype),
            self_bias=self_bias, cross_bias=cross_bias)

    def step(self, tokens: Tensor, at: Tensor, cache: "DecoderCache") -> tuple[Tensor, "DecoderCache"]:
        """tokens [N], the tokens at position ``at`` (a 1-element long tensor, so that one
        graph serves every step) -> the final hidden states [N, D] and the updated cache."""
        arch = self.arch
        x = arch.embed_scale * self.embed_tokens(tokens[:, None])
        if arch.entangle_position_embedding and not arch.disable_entangle:
            x = x + self.embed_positions(at)[None]
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        max_len = cache.self_k.shape[3]
        at_step = (torch.arange(max_len, device=at.device) == at)[None, None, :, None]
        self_bias = cache.self_bias.index_select(3, at)            # [L, 1, H, 1, T]
        cross_bias = cache.cross_bias.index_select(2, at)          # [1, H, 1, S]
        keys, values = [], []
        for index, layer in enumerate(self.layers):
            x, k, v = layer.step(x, cache.self_k[index], cache.self_v[index], at_step,
                                 self_bias[index], cache.cross_k[index], cache.cross_v[index],
                                 cross_bias, cache.encoder_mask)
            keys.append(k)
            values.append(v)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return x[:, 0], dataclasses.replace(cache, self_k=torch.stack(keys),
                                            self_v=torch.stack(values))


@dataclasses.dataclass(frozen=True)
class DecoderCache:
    """What a generation keeps between steps. Rows (N) are hypotheses: ``reorder`` follows the
    beam search as it keeps, repeats and drops them."""

    self_k: Tensor          # [L, N, H, T, Dh]
    self_v: Tensor          # [L, N, H, T, Dh]
    cross_k: Tensor         # [L, N, H, S, Dh]
    cross_v: Tensor         # [L, N, H, S, Dh]
    encoder_mask: Tensor    # [N, 1, 1, S] additive
    self_bias: Tensor       # [L, 1, H, T, T], the same for every row
    cross_bias: Tensor      # [1, H, T, S], the same for every row

    def reorder(self, rows: Tensor) -> "DecoderCache":
        return DecoderCache(self_k=self.self_k.index_select(1, rows),
                            self_v=self.self_v.index_select(1, rows),
                            cross_k=self.cross_k.index_select(1, rows),
                            cross_v=self.cross_v.index_select(1, rows),
                            encoder_mask=self.encoder_mask.index_select(0, rows),
                            self_bias=self.self_bias, cross_bias=self.cross_bias)
