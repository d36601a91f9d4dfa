"""Training FLOPs per token, the count behind MFU; each family gives its numbers.

The count (PaLM appendix B convention, as MaxText reports it), per trained token:
  forward  = 2 * N  +  2 * 2 * L * n_layers * d_attn
      N: parameters used in matmuls per token (every linear layer, including the output
         projection, tied or not; not the embedding lookup), so 2 * N multiply-adds;
      2 * 2 * L * n_layers * d_attn: QK^T and attention-times-V, each 2 * L * d_attn per token
         per layer, L the sequence length, d_attn = n_heads * head_dim; no causal halving;
  backward = 2 * forward (activation and weight gradients), so training = 3 * forward =
             6 * N + 12 * L * n_layers * d_attn.
With LoRA the base weights' weight-gradient matmuls are skipped: pass backward_factor=1.0 to
count only the work done (the default 2.0 is the conventional full-training count).
"""
from __future__ import annotations


def train_flops_per_token(n_matmul_params: int, n_layers: int, seq_len: int, attn_dim: int,
                          backward_factor: float = 2.0) -> float:
    """Training FLOPs per token, as documented at the top of this module."""
    forward = 2.0 * n_matmul_params + 2.0 * 2.0 * seq_len * n_layers * attn_dim
    return forward * (1.0 + backward_factor)
