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


def _responses(gen: sampling.Generation, first: int, n: int, vision_ids) -> list[np.ndarray]:
    """Rollouts first .. first + n - 1 of a generation, each cut before any vision special token it
    generated (a text-only continuation cannot hold an image)."""
    out = []
    for i in range(first, first + n):
        response = gen.tokens[i, : gen.lengths[i]]
        bad = np.flatnonzero(np.isin(response, vision_ids))
        out.append(response[: bad[0]] if bad.size else response)
    return out


def rollout_sequences(prompts: dict, gen: sampling.Generation, family, config, n: int, advantages,
                      per_row: int = 1) -> list[dict]:
    """Training rows of the rollouts (prompt b's at gen rows b*n .. b*n+n-1, sampling.generate(...,
    n=n)), each a prompt followed by `per_row` of its responses (per_row divides n), its images with
    it. per_row = 1: a copy of the prompt per rollout. per_row > 1: the responses share the prompt
    (attention codes, layers.causal_attention: the prompt 1, response j 2 + j, so that each
    response sees the prompt and itself only, at the positions it would have after its own copy),
    and the prompt's images and tokens are computed once for them. Per token: loss_mask (1 on
    response tokens, stop token included) and advantage (its rollout's; 0 on the prompt)."""
    vision_ids = family.vision_token_ids(config)
    advantages = np.asarray(advantages, np.float32)
    rows = []
    for b, (grid, pixels) in enumerate(family.row_images(prompts, config)):
        prompt = prompts["input_ids"][b][prompts["attention_mask"][b] > 0]
        responses = _responses(gen, b * n, n, vision_ids)
        for j0 in range(0, n, per_row):
            part = responses[j0:j0 + per_row]
            codes = [1] * len(part) if per_row == 1 else [2 + j for j in range(len(part))]
            rows.append({
                "input_ids": np.concatenate([prompt, *part]).astype(np.int32),
                "attention_mask": np.concatenate([np.ones(len(prompt), np.int32)]
                                                 + [np.full(len(r), c, np.int32) for c, r in zip(codes, part)]),
                "loss_mask": np.concatenate([np.zeros(len(prompt), np.int32)] + [np.ones(len(r), np.int32) for r in part]),
                "advantage": np.concatenate([np.zeros(len(prompt), np.float32)]
                                            + [np.full(len(r), advantages[b * n + j0 + j], np.float32)
                                               for j, r in enumerate(part)]),
                "pixel_values": pixels,
                "image_grid_thw": grid,
            })
    return rows


def pack(rows: list[dict], pad_id: int, length: int, patches: int) -> dict:
    """Rows -> one right-padded host batch of `length` tokens and `patches` patch rows; advantages
    per target token (t = 1 .. length - 1, as the log-probs)."""
    B = len(rows)
    ids = np.full((B, length), pad_id, np.int32)
    mask = np.zeros((B, length), np.int32)
    loss = np.zeros((B, length), np.int32)
    adv = np.zeros((B, length), np.float32)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], mask[i, :n], loss[i, :n], adv[i, :n] = (r["input_ids"], r["attention_mask"], r["loss_mask"],
                                                             r["advantage"])
    pv = np.concatenate([r["pixel_values"] for r in rows])
    pixel_values = np.zeros((patches, pv.shape[1]), np.float32)
    pixel_values[: len(pv)] = pv
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss, "pixel_values": pixel_values,
            "image_grid_thw": np.concatenate([r["image_grid_thw"] for r in rows]), "advantages": adv[:, 1:]}


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


def layout(micro_batch_size: int, n: int, shards: int, shared: bool) -> tuple[int, int]:
    """(rows per micro-batch, rollouts per row) for train.micro_batch_size rollouts per micro-batch
    over `shards` batch shards. Shared prompts: each row holds a prompt and as many of its n
    responses as a shard's share of the micro-batch allows (the largest divisor of n that fits), so
    that a group splits across rows only where the micro-batch forces it."""
    if not shared:
        return micro_batch_size, 1
    per_shard = micro_batch_size // shards
    per_row = max(d for d in range(1, n + 1) if n % d == 0 and d <= max(1, per_shard))
    return shards * max(1, per_shard // n), per_row


@dataclasses.dataclass(frozen=True)
class Packing:
    """How rollout rows become device micro-batches [k, rows, ...]: `per_row` rollouts per row
    (1: each with its own copy of the prompt; more: sharing it, rollout_sequences), `rows` rows per
    micro-batch; lengths bucketed on `lengths` (length_buckets of data.length_buckets and
    per_row x sampling.max_new_tokens) and patch counts on `patch_buckets` (data.patch_buckets), so
    that updates compile a handful of shapes; patches laid out per batch shard of `mesh` as the
    family stacks them."""
    rows: int
    per_row: int
    lengths: tuple
    patch_buckets: tuple
    family: Any
    model_config: Any
    mesh: Any

    def rows_per_update(self, batch_size: int, n: int) -> int:
        """Training rows of one update's batch_size prompts x n rollouts."""
        return batch_size * n // self.per_row

    def micro_batches(self, rows: list[dict], pad_id: int) -> dict:
        """Rollout rows -> device micro-batches with position ids, vision indices and per-token
        advantages. Rows that do not fill the last micro-batch are padded with empty rows."""
        empty = {"input_ids": np.array([pad_id], np.int32), "attention_mask": np.zeros(1, np.int32),
                 "loss_mask": np.zeros(1, np.int32), "advantage": np.zeros(1, np.float32),
                 "pixel_values": rows[0]["pixel_values"][:0], "image_grid_thw": rows[0]["image_grid_thw"][:0]}
        rows = rows + [empty] * (-len(rows) % self.rows)
        length = bucket(max(len(r["input_ids"]) for r in rows), self.lengths)
        hosts = []
        for i in range(0, len(rows), self.rows):
            chunk = rows[i:i + self.rows]
            patches = bucket(sum(len(r["pixel_values"]) for r in chunk), self.patch_buckets)
            hosts.append(pack(chunk, pad_id, length, patches))
        advantages = np.stack([h.pop("advantages") for h in hosts])
        stacked = self.family.stack_micro(hosts, self.model_config, sharding.batch_shards(self.mesh))
        stacked["advantages"] = advantages
        return loop.to_device(stacked, loop.batch_shardings(stacked, self.mesh, self.family), self.family)
