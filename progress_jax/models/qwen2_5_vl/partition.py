"""How Qwen2.5-VL's parameters shard over the (data, fsdp, tensor) mesh: regexes on the '/'-joined
parameter paths (progress_jax.sharding.PartitionRules). Megatron-style tensor parallelism
(column-parallel in-projections, row-parallel out-projections) with FSDP on the other dimension.

The decoder layers (`layers/...`) and vision blocks (`visual/blocks/...`) are stacked: their
parameters carry a leading layer axis that no mesh axis splits; the rules below describe the
dimensions after it."""
from __future__ import annotations

from jax.sharding import PartitionSpec as P

from progress_jax.sharding import PartitionRules

_COL = r"(q_proj|k_proj|v_proj|gate_proj|up_proj|qkv|fc1|lm_head)"
_ROW = r"(o_proj|down_proj|proj|fc2)"

PARTITION_RULES = PartitionRules(
    rules=(  # (regex on the path, spec); first match wins
        (rf"{_COL}/kernel$", P("fsdp", "tensor")),
        (rf"{_COL}/bias$", P("tensor")),
        (rf"{_COL}/lora_a$", P("fsdp", None)),
        (rf"{_COL}/lora_b$", P(None, "tensor")),
        (rf"{_ROW}/kernel$", P("tensor", "fsdp")),
        (rf"{_ROW}/bias$", P(None)),
        (rf"{_ROW}/lora_a$", P("tensor", None)),
        (rf"{_ROW}/lora_b$", P(None, "fsdp")),
        (r"patch_embed/kernel$", P(None, "fsdp")),
        (r"^embed_tokens$", P("tensor", "fsdp")),
        (r"weight$", P(None)),  # norms
        (r"lora_mask$", P()),  # LoRA on/off per stacked layer
    ),
    stacked=("layers", "visual/blocks"),
)
