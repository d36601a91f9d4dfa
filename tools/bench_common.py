"""Shared by the benchmark scripts: the small random Qwen2.5-VL that both stacks build from one
transformers config, its special token ids, ProgressLM-shaped prompts and a median timer."""

from __future__ import annotations

import statistics
import time

import numpy as np

IMAGE, VSTART, VEND, VIDEO, EOS = 8000, 8001, 8002, 8003, 8004


def hf_config(hidden: int, layers: int):
    """LM `hidden` x `layers` (vocab 8192, GQA with 2 KV heads), vision 4 blocks x 256."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=8192, hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
            num_attention_heads=hidden // 64, num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6,
            rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]}, max_position_embeddings=4096,
            eos_token_id=EOS,
        ),
        vision_config=dict(depth=4, hidden_size=256, intermediate_size=640, num_heads=4, out_hidden_size=hidden,
                           fullatt_block_indexes=[1, 3], window_size=112),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND,
        tie_word_embeddings=True,
    )


def progresslm_prompts(count: int, images: int, *, first: int, step: int, per_image: int, last: int,
                       ids=(VSTART, IMAGE, VEND), dtype=np.int32, seed: int = 0) -> dict:
    """Right-padded prompts shaped like ProgressLM's: an instruction of first + step * row text tokens,
    `images` 224x224 images each followed by `per_image` text tokens (the demonstration's key frames,
    then the observation), a closing question of `last`; ids: vision start, image pad, vision end."""
    start, pad, end = ids
    rng = np.random.default_rng(seed)
    text = lambda n: list(rng.integers(10, 7000, n))  # noqa: E731
    rows = []
    for b in range(count):
        seq = text(first + step * b)
        for _ in range(images):
            seq += [start] + [pad] * 64 + [end] + text(per_image)
        rows.append(seq + text(last))
    L = max(map(len, rows))
    tokens, mask = np.zeros((count, L), dtype), np.zeros((count, L), dtype)
    for b, r in enumerate(rows):
        tokens[b, : len(r)], mask[b, : len(r)] = r, 1
    grid = np.array([[1, 16, 16]] * (count * images), np.int64)
    pv = rng.standard_normal((int(grid.prod(-1).sum()), 1176)).astype(np.float32)
    return {"input_ids": tokens, "attention_mask": mask, "pixel_values": pv, "image_grid_thw": grid}


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `repeats` calls of `fn` after `warmup` untimed ones (compilation)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
