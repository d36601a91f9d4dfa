"""Registries the GRPO job looks names up in: rewards and advantage estimators.

A reward is fn(responses: list[str], records: list[Record]) -> one dict per response holding
"overall" (the scalar GRPO uses) and any parts to log. `grpo.reward` names one of REWARDS
(progress_jax.rewards) or a user's own function as `module:function` (as EasyR1's
`reward_function: path.py:compute_score`), e.g. --config.grpo.reward=my_rewards:length_penalty.
"""
from __future__ import annotations

import importlib
import math

from progress_jax.train.grpo_loss import ADVANTAGES


def rewards() -> dict:
    """{name: batch reward fn} of progress_jax.rewards."""
    from progress_jax import rewards as module

    return module.REWARDS


def get_reward(name: str, key: str = "grpo.reward"):
    """The reward function for a registry name or `module:function`; errors name the config key."""
    table = rewards()
    if name in table:
        return checked(table[name], name)
    if ":" not in name:
        raise ValueError(f"config key {key}: unknown reward {name!r}; expected one of {sorted(table)} "
                         f"or module:function")
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"config key {key}: cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"config key {key}: module {module_name!r} has no function {attr!r}")
    return checked(fn, name)


def checked(fn, name: str):
    """fn, with its output checked: one dict per response whose "overall" is a finite number (a NaN
    or Inf reward would poison every advantage of its group)."""
    def run(responses, records):
        out = fn(responses, records)
        if not isinstance(out, (list, tuple)) or len(out) != len(responses):
            raise ValueError(f"reward {name}: expected a list of {len(responses)} dicts (one per response), "
                             f"got {type(out).__name__}" + (f" of {len(out)}" if hasattr(out, "__len__") else ""))
        for i, r in enumerate(out):
            value = r.get("overall") if isinstance(r, dict) else None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"reward {name}: response {i} got overall={value!r}; every response needs a "
                                 f"finite number under 'overall' ({responses[i][:80]!r})")
        return out

    return run


def get_advantage(name: str, key: str = "grpo.advantage"):
    if name not in ADVANTAGES:
        raise ValueError(f"config key {key}: unknown advantage estimator {name!r}; expected one of {sorted(ADVANTAGES)}")
    return ADVANTAGES[name]
