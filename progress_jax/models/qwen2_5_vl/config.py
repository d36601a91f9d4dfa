"""Qwen2.5-VL configuration: dataclasses read from a checkpoint's config.json, and presets.

Both config.json layouts are read: the flat Hub layout (text fields at top level, `rope_theta`
and `rope_scaling: {type: mrope, mrope_section}` at top level) and the nested `text_config`
layout that transformers 5 writes (`rope_parameters` inside `text_config`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    out_hidden_size: int = 2048
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    rope_theta: float = 10000.0
    # Not a field of the Hub config: transformers fixes it at 1e-6 for the vision tower.
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 11008
    num_hidden_layers: int = 36
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, ...] = (16, 24, 24)
    max_position_embeddings: int = 128000
    hidden_act: str = "silu"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
    model_type: ClassVar[str] = "qwen2_5_vl"  # config.json's; picks the model family (models/families.py)
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    tie_word_embeddings: bool = True
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    eos_token_id: int = 151645
    pad_token_id: int = 151643
    # How a random model's Linear kernels are drawn (weights loaded from a checkpoint replace them; not
    # part of config.json): "normal", N(0, 0.02^2) as transformers initialises Qwen2.5-VL; "fan_in",
    # N(0, 1/fan_in), for a model trained from scratch (the tiny preset): its attention learns to
    # copy from the context several times sooner (docs/learning.md).
    init: str = "normal"

    def validate(self) -> None:
        t, v = self.text, self.vision
        problems = []
        if self.init not in ("normal", "fan_in"):
            problems.append(f"init must be 'normal' or 'fan_in', got {self.init!r}")
        if t.hidden_size % t.num_attention_heads:
            problems.append("text_config.hidden_size must be divisible by num_attention_heads")
        if t.num_attention_heads % t.num_key_value_heads:
            problems.append("text_config.num_attention_heads must be a multiple of num_key_value_heads")
        if 2 * sum(t.mrope_section) != t.head_dim:
            problems.append(
                f"rope mrope_section {list(t.mrope_section)} must sum to head_dim/2 = {t.head_dim // 2}"
            )
        if v.hidden_size % v.num_heads or v.head_dim % 4:
            problems.append("vision_config.hidden_size/num_heads must be divisible by 4 (2-D RoPE)")
        if v.out_hidden_size != t.hidden_size:
            problems.append(
                f"vision_config.out_hidden_size ({v.out_hidden_size}) != text hidden_size ({t.hidden_size})"
            )
        if v.window_size % (v.patch_size * v.spatial_merge_size):
            problems.append("vision_config.window_size must be a multiple of patch_size * spatial_merge_size")
        bad = [i for i in v.fullatt_block_indexes if not 0 <= i < v.depth]
        if bad:
            problems.append(f"vision_config.fullatt_block_indexes {bad} outside 0..{v.depth - 1}")
        if problems:
            raise ValueError("invalid Qwen2.5-VL config: " + "; ".join(problems))

    # ---- reading and writing config.json -------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Qwen25VLConfig":
        text_src = dict(d.get("text_config") or {})
        # Flat Hub layout: text fields at the top level. Nested fields win where both exist.
        for f in dataclasses.fields(TextConfig):
            if f.name not in text_src and f.name in d:
                text_src[f.name] = d[f.name]
        rope = dict(text_src.get("rope_parameters") or text_src.get("rope_scaling") or {})
        rope.update({k: v for k, v in (d.get("rope_scaling") or {}).items() if k not in rope})
        if "rope_theta" not in text_src:
            text_src["rope_theta"] = rope.get("rope_theta", d.get("rope_theta", TextConfig.rope_theta))
        if "mrope_section" in rope:
            text_src["mrope_section"] = tuple(rope["mrope_section"])
        text = _build(TextConfig, text_src, "text_config")

        vis_src = dict(d.get("vision_config") or {})
        vrope = vis_src.get("rope_parameters") or {}
        if "rope_theta" in vrope and "rope_theta" not in vis_src:
            vis_src["rope_theta"] = vrope["rope_theta"]
        if "fullatt_block_indexes" in vis_src:
            vis_src["fullatt_block_indexes"] = tuple(vis_src["fullatt_block_indexes"])
        vis_src.setdefault("out_hidden_size", text.hidden_size)
        vision = _build(VisionConfig, vis_src, "vision_config")

        tie = d.get("tie_word_embeddings", (d.get("text_config") or {}).get("tie_word_embeddings", False))
        top = {
            k: d[k]
            for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
            if k in d
        }
        eos = d.get("eos_token_id", text_src.get("eos_token_id"))
        if isinstance(eos, list):
            eos = eos[0]
        if eos is not None:
            top["eos_token_id"] = eos
        pad = d.get("pad_token_id", text_src.get("pad_token_id"))
        if pad is None:
            pad = d.get("bos_token_id", text_src.get("bos_token_id"))
        if pad is not None:
            top["pad_token_id"] = pad
        cfg = cls(vision=vision, text=text, tie_word_embeddings=bool(tie), **top)
        cfg.validate()
        return cfg

    @classmethod
    def from_json(cls, path: str) -> "Qwen25VLConfig":
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"no config.json at {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """The nested layout transformers reads (and writes)."""
        t, v = self.text, self.vision
        text = {
            "model_type": "qwen2_5_vl_text",
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "rms_norm_eps": t.rms_norm_eps,
            "max_position_embeddings": t.max_position_embeddings,
            "hidden_act": t.hidden_act,
            "rope_parameters": {
                "rope_type": "default",
                "type": "mrope",
                "rope_theta": t.rope_theta,
                "mrope_section": list(t.mrope_section),
            },
            "eos_token_id": self.eos_token_id,
            "bos_token_id": self.pad_token_id,
            "pad_token_id": None,
        }
        vision = {
            "model_type": "qwen2_5_vl_vision",
            "depth": v.depth,
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "num_heads": v.num_heads,
            "in_channels": v.in_channels,
            "patch_size": v.patch_size,
            "temporal_patch_size": v.temporal_patch_size,
            "spatial_merge_size": v.spatial_merge_size,
            "window_size": v.window_size,
            "out_hidden_size": v.out_hidden_size,
            "fullatt_block_indexes": list(v.fullatt_block_indexes),
            "hidden_act": v.hidden_act,
            "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
        }
        return {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": self.model_type,
            "text_config": text,
            "vision_config": vision,
            "tie_word_embeddings": self.tie_word_embeddings,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
        }


def _build(cls, src: dict[str, Any], where: str):
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in src.items() if k in names}
    for k in ("hidden_act",):
        if k in kwargs and kwargs[k] != "silu":
            raise ValueError(f"{where}.{k} = {kwargs[k]!r} is not supported (only 'silu')")
    obj = cls(**kwargs)
    for k, f in names.items():
        val = getattr(obj, k)
        if f.type in ("int", "float") and not isinstance(val, (int, float)):
            raise ValueError(f"{where}.{k} must be a number, got {val!r}")
    return obj


def qwen2_5_vl_3b() -> Qwen25VLConfig:
    return Qwen25VLConfig()


def qwen2_5_vl_7b() -> Qwen25VLConfig:
    return Qwen25VLConfig(
        vision=VisionConfig(out_hidden_size=3584),
        text=TextConfig(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
        ),
        tie_word_embeddings=False,
    )


def tiny() -> Qwen25VLConfig:
    """The built-in default: small enough to train on two CPU cores, same architecture.

    Token ids match the built-in tiny tokenizer (data_pipeline.tokenizer), whose special tokens
    sit at ids 0..7: endoftext, im_start, im_end, vision_start, vision_end, vision_pad, image_pad,
    video_pad.
    """
    return Qwen25VLConfig(
        vision=VisionConfig(
            depth=4,
            hidden_size=64,
            intermediate_size=128,
            num_heads=4,
            out_hidden_size=128,
            fullatt_block_indexes=(1, 3),
        ),
        text=TextConfig(
            vocab_size=2048,
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_theta=10000.0,
            mrope_section=(4, 6, 6),
            max_position_embeddings=8192,
        ),
        tie_word_embeddings=True,
        image_token_id=6,
        video_token_id=7,
        vision_start_token_id=3,
        vision_end_token_id=4,
        eos_token_id=2,
        pad_token_id=0,
        init="fan_in",
    )


def nano() -> Qwen25VLConfig:
    """The tiny model with more, narrower heads, for the learning experiment (docs/learning.md): the
    language model's 8 heads of 16 learn to find the earlier item that matches the last one and copy
    its label (`tools/skill_data.py --task match_words`) in a few hundred steps, where the tiny
    preset's 4 heads of 32 stay at chance; the vision tower's 2 heads of 32 give its 2D rope eight
    frequencies per axis, enough to learn where one thing lies against another (`--task relation`)."""
    base = tiny()
    return dataclasses.replace(
        base, vision=dataclasses.replace(base.vision, num_heads=2),
        text=dataclasses.replace(base.text, num_attention_heads=8, num_key_value_heads=8, mrope_section=(2, 3, 3)))


PRESETS = {"qwen2_5_vl_3b": qwen2_5_vl_3b, "qwen2_5_vl_7b": qwen2_5_vl_7b, "tiny": tiny, "nano": nano}


def preset(name: str) -> Qwen25VLConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
