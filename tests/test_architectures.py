"""Every published OFA size builds, and its tensors are named and shaped as in ModelScope's
OFAModel (recorded in tests/golden/architectures.json.gz by make_goldens.py), so real
checkpoints of each size load unchanged."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from ofa_triton.modeling import OfaArchitecture, OfaVisualEntailmentModel
from tests.golden.cases import PUBLISHED_SIZES, PUBLISHED_VOCAB_SIZE

MODELSCOPE_SHAPES = json.loads(gzip.decompress(
    (Path(__file__).parent / "golden" / "architectures.json.gz").read_bytes()))

# Parameter counts the OFA paper and model cards publish, in millions.
PUBLISHED_PARAMETERS_M = {"tiny": 33, "medium": 93, "base": 180, "large": 470, "huge": 930}


def _build_on_meta(size: str) -> OfaVisualEntailmentModel:
    arch = OfaArchitecture(vocab_size=PUBLISHED_VOCAB_SIZE, **PUBLISHED_SIZES[size])
    with torch.device("meta"):
        return OfaVisualEntailmentModel(arch, answer_token_ids=[117, 4420, 4420])


@pytest.mark.parametrize("size", sorted(PUBLISHED_SIZES))
def test_tensor_names_and_shapes_match_modelscope(size):
    ours = {k: list(v.shape) for k, v in _build_on_meta(size).state_dict().items()}
    theirs = MODELSCOPE_SHAPES[size]
    assert sorted(set(theirs) - set(ours)) == []
    assert sorted(set(ours) - set(theirs)) == []
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}


@pytest.mark.parametrize("size", sorted(PUBLISHED_SIZES))
def test_parameter_count_matches_the_published_figure(size):
    model = _build_on_meta(size)
    unique = {id(p): p.numel() for p in model.parameters()}
    millions = sum(unique.values()) / 1e6
    assert abs(millions - PUBLISHED_PARAMETERS_M[size]) / PUBLISHED_PARAMETERS_M[size] < 0.03


def test_unsupported_configurations_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="use_ofasys"):
        OfaArchitecture.from_config_dict({"use_ofasys": True})
    with pytest.raises(ValueError, match="resnet_type"):
        OfaArchitecture.from_config_dict({"resnet_type": "vit"})
    with pytest.raises(ValueError, match="divisible"):
        OfaArchitecture.from_config_dict({"d_model": 100, "encoder_attention_heads": 3})
