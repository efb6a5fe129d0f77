"""The OFA architecture, read from a checkpoint's ``config.json``.

Field names and defaults follow ModelScope's ``OFAConfig`` so that a config.json written by
``OFAModel.save_pretrained`` (ModelScope or the OFA-Sys Hugging Face fork) reads unchanged.
Nothing here hard-codes a model size: tiny, medium, base, large and huge differ only in these
fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

# ResNet stage depths by name, as ModelScope's OFAEncoder builds them (stage 4 is never built:
# OFA cuts the ResNet after stage 3, stride 16). resnet18 and resnet34 use Bottleneck blocks
# there too, so they are listed by depth only.
RESNET_STAGE_DEPTHS = {
    "resnet18": (2, 2, 2),
    "resnet34": (3, 4, 6),
    "resnet50": (3, 4, 6),
    "resnet101": (3, 4, 23),
    "resnet152": (3, 8, 36),
}

# The stride of the truncated ResNet: one image token per 16x16 pixels.
IMAGE_PATCH_STRIDE = 16

# ModelScope builds the token relative-position buckets for this many positions, whatever
# max_position_embeddings says (DEFAULT_MAX_SOURCE_POSITIONS in modeling_ofa.py).
TOKEN_BUCKET_MAX_POSITION = 1024


class UnsupportedCheckpointError(ValueError):
    """The checkpoint is a valid OFA model, but not one this exporter can serve."""


@dataclasses.dataclass(frozen=True)
class OfaArchitecture:
    vocab_size: int = 59457
    max_position_embeddings: int = 1024
    d_model: int = 512
    encoder_layers: int = 4
    encoder_ffn_dim: int = 2048
    encoder_attention_heads: int = 8
    decoder_layers: int = 4
    decoder_ffn_dim: int = 2048
    decoder_attention_heads: int = 8
    activation_function: str = "gelu"
    scale_embedding: bool = False
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    encoder_normalize_before: bool = True
    decoder_normalize_before: bool = True
    normformer: bool = True
    layernorm_embedding: bool = True
    patch_layernorm_embedding: bool = True
    code_layernorm_embedding: bool = True
    resnet_type: str = "resnet101"
    token_bucket_size: int = 256
    image_bucket_size: int = 42
    add_type_embedding: bool = True
    share_decoder_input_output_embed: bool = True
    attn_scale_factor: float = 2.0
    code_image_size: int = 128
    entangle_position_embedding: bool = False
    disable_entangle: bool = False
    interpolate_position: bool = False
    orig_patch_image_size: int = 224
    share_attn_bias: bool = False
    use_image_feature: bool = True
    use_ofasys: bool = False
    use_gamma_feature: bool = False
    gamma: float = 1.0
    exclude_mlp: bool = True
    mlp_dim: int = 512
    temperature_init_value: float | None = None

    @classmethod
    def from_config_dict(cls, config: Mapping[str, Any]) -> "OfaArchitecture":
        known = {f.name for f in dataclasses.fields(cls)}
        arch = cls(**{k: v for k, v in config.items() if k in known})
        arch.check_supported()
        return arch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_supported(self) -> None:
        problems = []
        if self.use_ofasys:
            problems.append("use_ofasys=true (the OFA-Sys ViT variant) is not supported; "
                            "export a ResNet-based OFA checkpoint")
        if not self.use_image_feature:
            problems.append("use_image_feature=false: visual entailment needs the image encoder")
        if self.resnet_type not in RESNET_STAGE_DEPTHS:
            problems.append(f"resnet_type={self.resnet_type!r} is not one of "
                            f"{sorted(RESNET_STAGE_DEPTHS)}")
        if self.activation_function not in ("gelu", "relu", "gelu_new", "gelu_fast", "tanh"):
            problems.append(f"activation_function={self.activation_function!r} is not supported")
        for side in ("encoder", "decoder"):
            d, h = self.d_model, getattr(self, f"{side}_attention_heads")
            if d % h:
                problems.append(f"d_model={d} is not divisible by {side}_attention_heads={h}")
        if problems:
            raise UnsupportedCheckpointError("; ".join(problems))

    @property
    def resnet_stage_depths(self) -> tuple[int, int, int]:
        return RESNET_STAGE_DEPTHS[self.resnet_type]

    @property
    def embed_scale(self) -> float:
        return self.d_model ** 0.5 if self.scale_embedding else 1.0
