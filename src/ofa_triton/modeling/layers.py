"""Transformer blocks of OFA: NormFormer attention with head scaling and additive position bias.

Parameter names match ModelScope's ``OFAAttention``, ``OFAEncoderLayer`` and ``OFADecoderLayer``.
The arithmetic follows them step for step (same scaling point, same order of bias and mask
additions) so that float32 results agree to rounding. Dropout, drop-path and layer-drop are
training machinery and are left out; the decoder layer's ``step`` is one generation step with
a key/value cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import OfaArchitecture


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def _gelu_fast(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


# transformers' ACT2FN entries that OFA configs use.
ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": _gelu_tanh,
    "gelu_fast": _gelu_fast,
    "tanh": torch.tanh,
}


class OfaAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, scale_factor: float):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = float(self.head_dim * scale_factor) ** -0.5
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        # NormFormer head scaling; always present in OFA checkpoints.
        self.c_attn = nn.Parameter(torch.ones(num_heads))

    def _heads(self, x: Tensor) -> Tensor:
        # [B, T, D] -> [B, H, T, Dh]
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: Tensor, key_value: Tensor, attn_bias: Tensor,
                attn_mask: Tensor) -> Tensor:
        """query [B, T, D], key_value [B, S, D], attn_bias [B or 1, H, T, S],
        attn_mask additive, broadcastable to [B, 1, T, S]."""
        k, v = self.project_kv(key_value)
        return self.attend(query, k, v, attn_bias, attn_mask)

    def project_kv(self, key_value: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values [B, H, S, Dh]: what a decoder caches between generation steps."""
        return self._heads(self.k_proj(key_value)), self._heads(self.v_proj(key_value))

    def attend(self, query: Tensor, k: Tensor, v: Tensor, attn_bias: Tensor,
               attn_mask: Tensor) -> Tensor:
        q = self._heads(self.q_proj(query) * self.scaling)
        # softmax(q k^T + bias + mask) v as one fused kernel where the device has one (the
        # memory-efficient kernel on CUDA takes an additive bias); ModelScope scales q before
        # the product, so the kernel's own scale is 1. The ONNX exporter writes the same
        # MatMul/Add/Softmax/MatMul it would write for the unfused form.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias + attn_mask,
                                             scale=1.0)   # [B, H, T, Dh]
        out = out * self.c_attn[None, :, None, None]
        out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], self.embed_dim)
        return self.out_proj(out)


def _optional_layer_norm(enabled: bool, dim: int) -> nn.LayerNorm | None:
    return nn.LayerNorm(dim) if enabled else None


class _SublayerMixin(nn.Module):
    """Pre/post layer norm, NormFormer mid norm, optional gamma scale, residual."""

    normalize_before: bool

    def _sublayer(self, x: Tensor, pre_norm: nn.LayerNorm, mid_norm: nn.LayerNorm | None,
                  gamma: Tensor | None, body) -> Tensor:
        residual = x
        if self.normalize_before:
            x = pre_norm(x)
        x = body(x)
        if mid_norm is not None:
            x = mid_norm(x)
        if gamma is not None:
            x = gamma * x
        x = residual + x
        if not self.normalize_before:
            x = pre_norm(x)
        return x

    def _add_feed_forward(self, arch: OfaArchitecture, ffn_dim: int, normalize_before: bool) -> None:
        dim = arch.d_model
        self.activation_fn = ACTIVATIONS[arch.activation_function]
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.ffn_layer_norm = _optional_layer_norm(arch.normformer, ffn_dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.normalize_before = normalize_before

    def _feed_forward(self, x: Tensor) -> Tensor:
        x = self.activation_fn(self.fc1(x))
        if self.ffn_layer_norm is not None:
            x = self.ffn_layer_norm(x)
        return self.fc2(x)


class OfaEncoderLayer(_SublayerMixin):
    def __init__(self, arch: OfaArchitecture):
        super().__init__()
        dim = arch.d_model
        self.self_attn = OfaAttention(dim, arch.encoder_attention_heads, arch.attn_scale_factor)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.self_attn_mid_layer_norm = _optional_layer_norm(arch.normformer, dim)
        self._add_feed_forward(arch, arch.encoder_ffn_dim, arch.encoder_normalize_before)
        if arch.use_gamma_feature:
            self.weight_self_attn = nn.Parameter(torch.full((dim,), float(arch.gamma)))
            self.weight_ffn = nn.Parameter(torch.full((dim,), float(arch.gamma)))
        else:
            self.weight_self_attn = self.weight_ffn = None

    def forward(self, x: Tensor, attn_bias: Tensor, attn_mask: Tensor) -> Tensor:
        x = self._sublayer(x, self.self_attn_layer_norm, self.self_attn_mid_layer_norm,
                           self.weight_self_attn,
                           lambda h: self.self_attn(h, h, attn_bias, attn_mask))
        return self._sublayer(x, self.final_layer_norm, None, self.weight_ffn,
                              self._feed_forward)


class OfaDecoderLayer(_SublayerMixin):
    def __init__(self, arch: OfaArchitecture):
        super().__init__()
        dim = arch.d_model
        heads = arch.decoder_attention_heads
        self.self_attn = OfaAttention(dim, heads, arch.attn_scale_factor)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.self_attn_mid_layer_norm = _optional_layer_norm(arch.normformer, dim)
        self.cross_attn = OfaAttention(dim, heads, arch.attn_scale_factor)
        self.cross_attn_layer_norm = nn.LayerNorm(dim)
        self.cross_attn_mid_layer_norm = _optional_layer_norm(arch.normformer, dim)
        self._add_feed_forward(arch, arch.decoder_ffn_dim, arch.decoder_normalize_before)
        if arch.use_gamma_feature:
            self.weight_self_attn = nn.Parameter(torch.full((dim,), float(arch.gamma)))
            self.weight_cross_attn = nn.Parameter(torch.full((dim,), float(arch.gamma)))
            self.weight_ffn = nn.Parameter(torch.full((dim,), float(arch.gamma)))
        else:
            self.weight_self_attn = self.weight_cross_attn = self.weight_ffn = None

    def forward(self, x: Tensor, self_attn_bias: Tensor, causal_mask: Tensor,
                encoder_out: Tensor, cross_attn_bias: Tensor, encoder_mask: Tensor) -> Tensor:
        x = self._sublayer(x, self.self_attn_layer_norm, self.self_attn_mid_layer_norm,
                           self.weight_self_attn,
                           lambda h: self.self_attn(h, h, self_attn_bias, causal_mask))
        x = self._sublayer(x, self.cross_attn_layer_norm, self.cross_attn_mid_layer_norm,
                           self.weight_cross_attn,
                           lambda h: self.cross_attn(h, encoder_out, cross_attn_bias,
                                                     encoder_mask))
        return self._sublayer(x, self.final_layer_norm, None, self.weight_ffn,
                              self._feed_forward)

    def step(self, x: Tensor, self_k: Tensor, self_v: Tensor, at_step: Tensor,
             self_attn_bias: Tensor, cross_k: Tensor, cross_v: Tensor, cross_attn_bias: Tensor,
             encoder_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One generation step of x [N, 1, D]. self_k/self_v [N, H, T, Dh]: this layer's
        key/value cache, of a fixed length T; ``at_step`` [1, 1, T, 1] is true at this step's
        position, where the step's key and value go (self_attn_bias masks the positions after
        it). cross_k/cross_v: the encoder's, computed once (OfaDecoder.start). Returns x and
        the updated cache; nothing is written in place, so the step exports as a graph."""
        cache: list[Tensor] = []

        def self_attention(h: Tensor) -> Tensor:
            k, v = self.self_attn.project_kv(h)
            cache[:] = [torch.where(at_step, k, self_k), torch.where(at_step, v, self_v)]
            return self.self_attn.attend(h, cache[0], cache[1], self_attn_bias, 0.0)

        x = self._sublayer(x, self.self_attn_layer_norm, self.self_attn_mid_layer_norm,
                           self.weight_self_attn, self_attention)
        x = self._sublayer(x, self.cross_attn_layer_norm, self.cross_attn_mid_layer_norm,
                           self.weight_cross_attn,
                           lambda h: self.cross_attn.attend(h, cross_k, cross_v, cross_attn_bias,
                                                            encoder_mask))
        x = self._sublayer(x, self.final_layer_norm, None, self.weight_ffn, self._feed_forward)
        return x, cache[0], cache[1]


def padding_attention_mask(padding_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, S] bool (True = padding) -> additive [B, 1, 1, S] mask, as ModelScope's expand_mask
    (finfo.min where padded, 0 elsewhere; adding 0 leaves unpadded rows bit-identical)."""
    return (padding_mask.to(dtype) * torch.finfo(dtype).min)[:, None, None, :]


def causal_attention_mask(length: Tensor | int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Additive [1, 1, T, T] mask: -inf above the diagonal, as ModelScope's _make_causal_mask."""
    positions = torch.arange(length, device=device)
    future = positions[None, :] > positions[:, None]
    return torch.zeros_like(future, dtype=dtype).masked_fill(future, -math.inf)[None, None]
