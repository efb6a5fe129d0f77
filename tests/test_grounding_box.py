"""Grounding's box arithmetic (ofa_triton.tasks.visual_grounding.box) against ModelScope's own
lines (OfaForAllTasks._visual_grounding_inference, on torch tensors as it runs them): equal
to the last float32 bit, for random bins and image sizes. The served boxes are checked against
ModelScope's pipeline in test_visual_grounding.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ofa_triton.tasks.visual_grounding.box import box_from_tokens

EOS, PAD = 2, 1
VOCAB = 59457       # OFA's real tokenizer length: BPE 50265 + 8192 codes + 1000 bins


@dataclasses.dataclass
class _Settings:
    patch_image_size: int
    max_image_size: int
    num_bins: int = 1000
    first_bin_id: int = VOCAB - 1000


def _modelscope_box(tokens: list[int], width: int, height: int, settings) -> np.ndarray:
    """ModelScope 1.40's lines, verbatim in substance."""
    token_tensor = torch.tensor(tokens)
    region_coord_l = [token_tensor[:-1] - VOCAB + settings.num_bins]
    region_tensor = torch.stack(region_coord_l, dim=0)
    region_tensor = region_tensor / (settings.num_bins - 1) * settings.max_image_size
    w_resize_ratios = torch.stack([torch.tensor(settings.patch_image_size / width)])
    h_resize_ratios = torch.stack([torch.tensor(settings.patch_image_size / height)])
    region_tensor[:, ::2] /= w_resize_ratios
    region_tensor[:, 1::2] /= h_resize_ratios
    return region_tensor[0].numpy()


@pytest.mark.parametrize("patch, max_image", ((512, 512), (256, 512), (128, 320)))
def test_box_is_modelscopes_to_the_bit(patch, max_image):
    rng = np.random.default_rng(patch)
    settings = _Settings(patch, max_image)
    for _ in range(200):
        bins = rng.integers(0, 1000, 4)
        width, height = (int(v) for v in rng.integers(1, 4000, 2))
        tokens = [int(b) + settings.first_bin_id for b in bins] + [EOS]
        got = box_from_tokens(np.array(tokens + [PAD, PAD]), np.array([width, height]),
                              settings, EOS)
        expected = _modelscope_box(tokens, width, height, settings)
        assert got.dtype == np.float32
        assert np.array_equal(got, expected), (bins, width, height, got, expected)


def test_a_box_needs_four_tokens():
    settings = _Settings(512, 512)
    with pytest.raises(ValueError, match="generated 3 tokens"):
        box_from_tokens(np.array([58457, 58458, 58459, EOS, PAD]), np.array([10, 10]), settings,
                        EOS)


def test_first_bin_id_is_the_tokenizers_length_less_the_bins(tmp_path):
    from ofa_triton.export import load_checkpoint
    from ofa_triton.tiny_checkpoint import generate_tiny_checkpoint

    loaded = load_checkpoint(generate_tiny_checkpoint(tmp_path / "c", image_size=64,
                                                      task="visual-grounding"))
    task = loaded.settings.task
    assert task.first_bin_id == loaded.text.tokenizer.token_to_id("<bin_0>")
    assert task.first_bin_id + 999 == loaded.text.tokenizer.token_to_id("<bin_999>")
    assert task.output_length == 5            # four bins and eos
