"""Registries the GRPO job looks names up in: rewards and advantage estimators.

A reward is fn(responses: list[str], records: list[Record]) -> one dict per response holding
"overall" (the scalar GRPO uses) and any parts to log. `grpo.reward` names one of REWARDS
(progress_jax.rewards) or a user's own function as `module:function` (as EasyR1's
`reward_function: path.py:compute_score`), e.g. --config.grpo.reward=my_rewards:length_penalty.
"""
from __future__ import annotations

import importlib

from progress_jax.train.grpo_loss import ADVANTAGES


def rewards() -> dict:
    """{name: batch reward fn} of progress_jax.rewards."""
    from progress_jax import rewards as module

    table = getattr(module, "REWARDS", None)
    if table is None:  # older rewards module: the two variants of progress_rewards
        def variant(name):
            def fn(responses, records):
                return module.progress_rewards(responses, [r.closest_idx for r in records],
                                               [r.progress for r in records], [r.num_demos for r in records],
                                               variant=name)
            return fn
        table = {name: variant(name) for name in module.VARIANTS}
    return table


def get_reward(name: str, key: str = "grpo.reward"):
    """The reward function for a registry name or `module:function`; errors name the config key."""
    table = rewards()
    if name in table:
        return table[name]
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
    return fn


def get_advantage(name: str, key: str = "grpo.advantage"):
    if name not in ADVANTAGES:
        raise ValueError(f"config key {key}: unknown advantage estimator {name!r}; expected one of {sorted(ADVANTAGES)}")
    return ADVANTAGES[name]
