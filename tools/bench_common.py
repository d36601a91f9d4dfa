"""Shared by the benchmark scripts: the small random Qwen2.5-VL that both stacks build from one
transformers config, its special token ids, and a median timer."""

from __future__ import annotations

import statistics
import time

IMAGE, VSTART, VEND, EOS = 8000, 8001, 8002, 8004


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
        image_token_id=IMAGE, video_token_id=8003, vision_start_token_id=VSTART, vision_end_token_id=VEND,
        tie_word_embeddings=True,
    )


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
