"""GRPO rollout packing (model specifics from the model family): a prompt batch's real rows (with
their images), rollouts turned into training rows (prompt + response, loss on the response), and
rows packed into bucketed micro-batches (`Packing`, built by the GRPO job spec)."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from progress_jax import sampling, sharding
from progress_jax.train import loop


def repeat_rows(batch: dict, n: int, family, config) -> dict:
    """Each prompt row repeated n times (rows of one prompt contiguous), its images with it;
    padding rows of an incomplete batch (record None) dropped."""
    images = family.row_images(batch, config)
    rows = np.array([b for b, r in enumerate(batch["records"]) if r is not None for _ in range(n)])
    return {
        "input_ids": batch["input_ids"][rows],
        "attention_mask": batch["attention_mask"][rows],
        "pixel_values": np.concatenate([images[b][1] for b in rows]),
        "image_grid_thw": np.concatenate([images[b][0] for b in rows]),
        "records": [batch["records"][b] for b in rows],
    }


def rollout_sequences(prompts: dict, gen: sampling.Generation, family, config, n: int = 1) -> list[dict]:
    """One host row per rollout: prompt tokens + response tokens (stop token included); loss_mask
    marks the response tokens; the row's images travel with it. n: rollouts per prompt row (prompt
    b's at gen rows b*n .. b*n+n-1, sampling.generate(..., n=n)). A response is cut before any
    vision special token it generated (a text-only continuation cannot hold an image)."""
    vision_ids = family.vision_token_ids(config)
    rows = []
    for b, (grid, pixels) in enumerate(family.row_images(prompts, config)):
        prompt = prompts["input_ids"][b][prompts["attention_mask"][b] > 0]
        for i in range(b * n, b * n + n):
            response = gen.tokens[i, : gen.lengths[i]]
            bad = np.flatnonzero(np.isin(response, vision_ids))
            if bad.size:
                response = response[: bad[0]]
            rows.append({
                "input_ids": np.concatenate([prompt, response]).astype(np.int32),
                "loss_mask": np.concatenate([np.zeros(len(prompt), np.int32), np.ones(len(response), np.int32)]),
                "pixel_values": pixels,
                "image_grid_thw": grid,
            })
    return rows


def pack(rows: list[dict], pad_id: int, length: int, patches: int) -> dict:
    """Rows -> one right-padded host batch of `length` tokens and `patches` patch rows."""
    B = len(rows)
    ids = np.full((B, length), pad_id, np.int32)
    mask = np.zeros((B, length), np.int32)
    loss = np.zeros((B, length), np.int32)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], mask[i, :n], loss[i, :n] = r["input_ids"], 1, r["loss_mask"]
    pv = np.concatenate([r["pixel_values"] for r in rows])
    pixel_values = np.zeros((patches, pv.shape[1]), np.float32)
    pixel_values[: len(pv)] = pv
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss, "pixel_values": pixel_values,
            "image_grid_thw": np.concatenate([r["image_grid_thw"] for r in rows])}


def bucket(n: int, buckets) -> int:
    """The smallest configured bucket >= n (else the next power of two), so that updates compile
    a handful of shapes."""
    for b in sorted(buckets):
        if n <= b:
            return b
    return 1 << (n - 1).bit_length()


def length_buckets(prompt_buckets, max_new_tokens: int) -> tuple[int, ...]:
    """Token lengths of the update's rows: each prompt bucket + max_new_tokens, rounded up to 128."""
    return tuple(-(-(b + max_new_tokens) // 128) * 128 for b in prompt_buckets)


@dataclasses.dataclass(frozen=True)
class Packing:
    """How rollout rows become device micro-batches [k, micro_batch_size, ...]: lengths bucketed on
    `lengths` (length_buckets of data.length_buckets and sampling.max_new_tokens) and patch counts
    on `patch_buckets` (data.patch_buckets), so that updates compile a handful of shapes; patches
    laid out per batch shard of `mesh` as the family stacks them."""
    micro_batch_size: int
    lengths: tuple
    patch_buckets: tuple
    family: Any
    model_config: Any
    mesh: Any

    def micro_batches(self, rows: list[dict], advantages: np.ndarray, pad_id: int) -> dict:
        """Rollout rows -> device micro-batches with position ids, vision indices and advantages."""
        length = bucket(max(len(r["input_ids"]) for r in rows), self.lengths)
        hosts = []
        for i in range(0, len(rows), self.micro_batch_size):
            chunk = rows[i:i + self.micro_batch_size]
            patches = bucket(sum(len(r["pixel_values"]) for r in chunk), self.patch_buckets)
            hosts.append(pack(chunk, pad_id, length, patches))
        stacked = self.family.stack_micro(hosts, self.model_config, sharding.batch_shards(self.mesh))
        stacked["advantages"] = advantages.reshape(len(hosts), self.micro_batch_size).astype(np.float32)
        return loop.to_device(stacked, loop.batch_shardings(stacked, self.mesh, self.family), self.family)
