"""OFA's multimodal encoder: image patches from a ResNet, then the text, one sequence.

Follows ModelScope's ``OFAEncoder.forward`` for one image with ``patch_masks`` all true (the
only case visual entailment produces). Differences that change no value:
- padding is always applied through the mask (multiplying by 1 and adding 0 where nothing is
  padded), instead of a Python branch on ``padding_mask.any()``;
- relative-position buckets come from ``positions.py`` instead of gathers from big buffers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import IMAGE_PATCH_STRIDE, OfaArchitecture
from .layers import OfaEncoderLayer, padding_attention_mask
from .positions import (add_absolute_position_parameters, add_relative_position_tables,
                        image_grid_position_ids, image_relative_buckets, token_relative_buckets)
from .resnet import ResNetPatchEmbedder


class OfaEncoder(nn.Module):
    def __init__(self, arch: OfaArchitecture, embed_tokens: nn.Embedding):
        super().__init__()
        dim = arch.d_model
        heads = arch.encoder_attention_heads
        self.arch = arch
        self.num_heads = heads
        self.embed_tokens = embed_tokens
        self.type_embedding = nn.Embedding(2, dim) if arch.add_type_embedding else None
        self.embed_images = ResNetPatchEmbedder(arch.resnet_stage_depths)
        self.image_proj = nn.Linear(ResNetPatchEmbedder.out_channels, dim)
        self.patch_layernorm_embedding = nn.LayerNorm(dim) if arch.patch_layernorm_embedding else None
        add_absolute_position_parameters(self, arch, heads)
        self.pos_q_linear = nn.Linear(dim, dim)
        self.pos_k_linear = nn.Linear(dim, dim)
        self.layers = nn.ModuleList(OfaEncoderLayer(arch) for _ in range(arch.encoder_layers))
        self.layer_norm = nn.LayerNorm(dim) if arch.encoder_normalize_before else None
        add_relative_position_tables(self, arch, heads, arch.encoder_layers)
        self.layernorm_embedding = nn.LayerNorm(dim) if arch.layernorm_embedding else None

    def _image_position_embedding(self, height: Tensor, width: Tensor,
                                  position_ids: Tensor) -> Tensor:
        arch = self.arch
        orig_side = arch.orig_patch_image_size // IMAGE_PATCH_STRIDE
        # Decided by the checkpoint's image size, fixed per export: a shape branch, not a data one.
        if arch.interpolate_position and int(height) * int(width) > orig_side * orig_side:
            old_ids = image_grid_position_ids(orig_side, orig_side, arch.image_bucket_size,
                                              position_ids.device)
            old = self.embed_image_positions(old_ids).reshape(1, orig_side, orig_side, -1)
            new = F.interpolate(old.permute(0, 3, 1, 2), size=(int(height), int(width)),
                                mode="bilinear")
            return new.permute(0, 2, 3, 1).reshape(height * width, -1)
        return self.embed_image_positions(position_ids)

    def _rel_table(self, tables: nn.ModuleList, layer: int) -> Tensor:
        return tables[0 if self.arch.share_attn_bias else layer].weight

    def forward(self, input_ids: Tensor, patch_images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns hidden states [B, N+L, D], padding mask [B, N+L] and the position
        embedding [1, N+L, D] that the decoder's cross-attention bias needs.

        Positions are the same for every row, so the position embedding and the absolute
        position bias are computed once ([1, ...]) and broadcast over the batch."""
        arch = self.arch
        batch, text_len = input_ids.shape
        image_embed = self.embed_images(patch_images)               # [B, 1024, h, w]
        height, width = image_embed.shape[-2], image_embed.shape[-1]
        image_embed = image_embed.flatten(2).transpose(1, 2)        # [B, N, 1024]
        num_patches = image_embed.shape[1]
        image_position_ids = image_grid_position_ids(height, width, arch.image_bucket_size,
                                                     input_ids.device)
        image_pos_embed = self._image_position_embedding(height, width, image_position_ids)
        image_pos_embed = image_pos_embed[None]                      # [1, N, D]

        token_positions = torch.arange(text_len, device=input_ids.device)
        pos_embed = self.embed_positions(token_positions)[None]      # [1, L, D]

        # Token embedding (forward_embedding in ModelScope).
        x = arch.embed_scale * self.embed_tokens(input_ids)
        if arch.entangle_position_embedding:
            x = x + pos_embed
        if self.type_embedding is not None:
            x = x + self.type_embedding.weight[0]
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        image_x = arch.embed_scale * self.image_proj(image_embed)
        if arch.entangle_position_embedding:
            image_x = image_x + image_pos_embed
        if self.type_embedding is not None:
            image_x = image_x + self.type_embedding.weight[1]
        if self.patch_layernorm_embedding is not None:
            image_x = self.patch_layernorm_embedding(image_x)
        x = torch.cat([image_x, x], dim=1)

        padding_mask = torch.cat([torch.zeros((batch, num_patches), dtype=torch.bool,
                                              device=input_ids.device),
                                  input_ids.eq(arch.pad_token_id)], dim=1)
        x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))

        pos_embed = torch.cat([self.image_pos_ln(image_pos_embed), self.pos_ln(pos_embed)], dim=1)
        seq_len = pos_embed.shape[1]
        pos_q = self.pos_q_linear(pos_embed).reshape(1, seq_len, self.num_heads, -1)
        pos_k = self.pos_k_linear(pos_embed).reshape(1, seq_len, self.num_heads, -1)
        abs_pos_bias = torch.matmul(pos_q.transpose(1, 2) * self.pos_scaling,
                                    pos_k.transpose(1, 2).transpose(2, 3))   # [1, H, S, S]

        attn_mask = padding_attention_mask(padding_mask, x.dtype)
        text_buckets = token_relative_buckets(text_len, self.token_bucket_by_offset)
        image_buckets = image_relative_buckets(image_position_ids, arch.image_bucket_size)
        for index, layer in enumerate(self.layers):
            text_bias = F.embedding(text_buckets, self._rel_table(self.token_rel_pos_table_list,
                                                                  index)).permute(2, 0, 1)
            image_bias = F.embedding(image_buckets, self._rel_table(self.image_rel_pos_table_list,
                                                                    index)).permute(2, 0, 1)
            # Block-diagonal relative bias: image block top-left, text block bottom-right.
            # Adding the zero padding leaves the other entries bit-identical.
            relative = torch.cat([
                F.pad(image_bias, (0, text_len)),
                F.pad(text_bias, (num_patches, 0)),
            ], dim=1)
            x = layer(x, abs_pos_bias + relative[None], attn_mask)

        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return x, padding_mask, pos_embed
