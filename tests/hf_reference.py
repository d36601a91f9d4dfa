"""Tiny random transformers Qwen2.5-VL models and inputs, the independent reference for the model tests."""

from __future__ import annotations

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

IMAGE, VSTART, VEND = 250, 252, 253


def hf_config(tied: bool) -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
            rope_theta=10000.0,
            rms_norm_eps=1e-6,
            max_position_embeddings=1024,
        ),
        vision_config=dict(
            depth=3,
            hidden_size=32,
            intermediate_size=48,
            num_heads=2,
            out_hidden_size=64,
            fullatt_block_indexes=[1],
            window_size=112,
        ),
        image_token_id=IMAGE,
        video_token_id=251,
        vision_start_token_id=VSTART,
        vision_end_token_id=VEND,
        tie_word_embeddings=tied,
    )


def hf_model(tied: bool, seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    """Random weights everywhere, norms and biases included, so that no term can hide."""
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(hf_config(tied)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    return model


def image_block(grid_hw) -> list[int]:
    h, w = grid_hw
    return [VSTART] + [IMAGE] * ((h // 2) * (w // 2)) + [VEND]


def batch(padding_side: str = "right", seed: int = 0):
    """Two samples: the first with two images (merged grids needing several, padded windows),
    the second with one image and fewer tokens, padded. Returns numpy arrays."""
    rng = np.random.default_rng(seed)
    grids = [(1, 18, 26), (1, 14, 10), (1, 8, 12)]  # 252x364, 196x140, 112x168 pixels
    text = lambda n: list(rng.integers(10, 240, n))
    s0 = text(5) + image_block(grids[0][1:]) + text(4) + image_block(grids[1][1:]) + text(6)
    s1 = text(3) + image_block(grids[2][1:]) + text(7)
    L = max(len(s0), len(s1))
    ids = np.zeros((2, L), np.int64)
    mask = np.zeros((2, L), np.int64)
    for b, s in enumerate((s0, s1)):
        if padding_side == "right":
            ids[b, : len(s)], mask[b, : len(s)] = s, 1
        else:
            ids[b, L - len(s) :], mask[b, L - len(s) :] = s, 1
    grid = np.array(grids, np.int64)
    pixel_values = rng.standard_normal((int(grid.prod(-1).sum()), 1176)).astype(np.float32)
    return ids, mask, pixel_values, grid


def hf_logits(model, ids, mask, pixel_values, grid) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            pixel_values=torch.tensor(pixel_values),
            image_grid_thw=torch.tensor(grid),
            mm_token_type_ids=torch.tensor((ids == IMAGE).astype(np.int64)),
        )
    return out.logits.numpy()
