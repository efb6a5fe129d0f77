"""Relative-position buckets of OFA, for text and for the image grid.

ModelScope keeps them as big lookup buffers (1024x1024 for text, (42^2+1)^2 for images) that
are saved in every checkpoint. They are kept as buffers here too, so the checkpoint loads
unchanged, but the graph does not gather from them: a traced gather from a constant buffer
would be folded into one [heads, N, N] constant per layer at export (hundreds of MB for
OFA-large at 480 px). Instead:

- text: the bucket depends only on i - j, so a 1-D table indexed by i - j is taken from the
  buffer once (2047 entries);
- image: the bucket of two grid cells is a closed form of their row and column offsets.

``verify_bucket_buffers`` checks both shortcuts against the loaded buffers, element by element.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import TOKEN_BUCKET_MAX_POSITION, OfaArchitecture


def make_token_bucket_position(bucket_size: int,
                               max_position: int = TOKEN_BUCKET_MAX_POSITION) -> Tensor:
    """ModelScope's make_token_bucket_position, verbatim in effect."""
    context_pos = torch.arange(max_position, dtype=torch.long)[:, None]
    memory_pos = torch.arange(max_position, dtype=torch.long)[None, :]
    relative_pos = context_pos - memory_pos
    sign = torch.sign(relative_pos)
    mid = bucket_size // 2
    abs_pos = torch.where((relative_pos < mid) & (relative_pos > -mid), mid - 1,
                          torch.abs(relative_pos))
    log_pos = torch.ceil(torch.log(abs_pos / mid) / math.log((max_position - 1) / mid)
                         * (mid - 1)) + mid
    log_pos = log_pos.int()
    bucket_pos = torch.where(abs_pos.le(mid), relative_pos, log_pos * sign).long()
    return bucket_pos + bucket_size - 1


def make_image_bucket_position(bucket_size: int) -> Tensor:
    """ModelScope's make_image_bucket_position: [(B^2 + 1), (B^2 + 1)] bucket ids."""
    num_relative_distance = (2 * bucket_size - 1) ** 2 + 3
    coords = torch.stack(torch.meshgrid(torch.arange(bucket_size), torch.arange(bucket_size),
                                        indexing="ij"))
    coords_flatten = torch.flatten(coords, 1)
    relative = (coords_flatten[:, :, None] - coords_flatten[:, None, :]).permute(1, 2, 0)
    relative = relative.contiguous()
    relative[:, :, 0] += bucket_size - 1
    relative[:, :, 1] += bucket_size - 1
    relative[:, :, 0] *= 2 * bucket_size - 1
    index = torch.zeros((bucket_size * bucket_size + 1,) * 2, dtype=relative.dtype)
    index[1:, 1:] = relative.sum(-1)
    index[0, 0:] = num_relative_distance - 3
    index[0:, 0] = num_relative_distance - 2
    index[0, 0] = num_relative_distance - 1
    return index


def token_bucket_by_offset(token_rp_bucket: Tensor) -> Tensor:
    """1-D table t with t[(i - j) + (N - 1)] == token_rp_bucket[i, j], N = buffer side."""
    n = token_rp_bucket.shape[0]
    # Row N-1 holds offsets N-1 .. 0 (j = 0 .. N-1); row 0 holds offsets 0 .. -(N-1).
    non_negative = token_rp_bucket[n - 1].flip(0)           # offsets 0 .. N-1
    negative = token_rp_bucket[0, 1:].flip(0)               # offsets -(N-1) .. -1
    return torch.cat([negative, non_negative])


def token_relative_buckets(length: Tensor | int, by_offset: Tensor) -> Tensor:
    """[L, L] bucket ids for L text positions."""
    positions = torch.arange(length, device=by_offset.device)
    center = (by_offset.shape[0] - 1) // 2
    return by_offset[positions[:, None] - positions[None, :] + center]


def image_grid_position_ids(height: Tensor | int, width: Tensor | int, bucket_size: int,
                            device: torch.device) -> Tensor:
    """Row-major ids (1-based, id 0 is reserved) of an h x w patch grid inside the bucket grid."""
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    return (cols[None, :] + rows[:, None] * bucket_size + 1).reshape(-1)


def image_relative_buckets(position_ids: Tensor, bucket_size: int) -> Tensor:
    """[N, N] bucket ids between grid cells, equal to image_rp_bucket[ids][:, ids] for ids >= 1."""
    cell = position_ids - 1
    row = torch.div(cell, bucket_size, rounding_mode="floor")
    col = cell - row * bucket_size
    d_row = row[:, None] - row[None, :] + (bucket_size - 1)
    d_col = col[:, None] - col[None, :] + (bucket_size - 1)
    return d_row * (2 * bucket_size - 1) + d_col


def verify_bucket_buffers(token_rp_bucket: Tensor, image_rp_bucket: Tensor,
                          image_bucket_size: int, where: str) -> None:
    """Raise if a checkpoint's bucket buffers disagree with the shortcuts used in the graph."""
    n = token_rp_bucket.shape[0]
    rebuilt = token_relative_buckets(n, token_bucket_by_offset(token_rp_bucket))
    if not torch.equal(rebuilt, token_rp_bucket.long()):
        raise ValueError(f"{where}.token_rp_bucket is not a function of the position offset; "
                         "this checkpoint's relative positions are not OFA's")
    grid = torch.arange(1, image_bucket_size * image_bucket_size + 1)
    expected = image_rp_bucket.long()[1:, 1:]
    if not torch.equal(image_relative_buckets(grid, image_bucket_size), expected):
        raise ValueError(f"{where}.image_rp_bucket does not match OFA's image bucket layout "
                         f"for image_bucket_size={image_bucket_size}")


def add_absolute_position_parameters(module: nn.Module, arch: OfaArchitecture, heads: int) -> None:
    """The absolute-position parameters that OFA's encoder and decoder both hold (same names,
    same registration order as ModelScope's)."""
    dim = arch.d_model
    module.embed_positions = nn.Embedding(arch.max_position_embeddings + 2, dim)
    module.embed_image_positions = nn.Embedding(arch.image_bucket_size ** 2 + 1, dim)
    module.pos_ln = nn.LayerNorm(dim)
    module.image_pos_ln = nn.LayerNorm(dim)
    module.pos_scaling = float(dim / heads * arch.attn_scale_factor) ** -0.5


def add_relative_position_tables(module: nn.Module, arch: OfaArchitecture, heads: int,
                                 layers: int) -> None:
    """Per-layer (or shared) relative-position bias tables and ModelScope's bucket buffers."""
    tables = 1 if arch.share_attn_bias else layers
    module.token_rel_pos_table_list = nn.ModuleList(
        nn.Embedding(2 * arch.token_bucket_size - 1, heads) for _ in range(tables))
    image_num_rel_dis = (2 * arch.image_bucket_size - 1) ** 2 + 3
    module.image_rel_pos_table_list = nn.ModuleList(
        nn.Embedding(image_num_rel_dis, heads) for _ in range(tables))
    module.register_buffer("image_rp_bucket", make_image_bucket_position(arch.image_bucket_size))
    module.register_buffer("token_rp_bucket", make_token_bucket_position(arch.token_bucket_size))
    # Derived from token_rp_bucket, again after loading (OfaVisualEntailmentModel.load_checkpoint).
    module.register_buffer("token_bucket_by_offset", token_bucket_by_offset(module.token_rp_bucket),
                           persistent=False)
