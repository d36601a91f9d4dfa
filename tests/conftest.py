"""Test setup: 8 simulated CPU devices for sharding tests, fast compiles, float32 matmuls everywhere."""
import os

from tests.killable import xla_flags

os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (and vLLM where the test says); skipped without one")
    config.addinivalue_line("markers", "heavy: runs whole jobs (a minute or more); started first")


def pytest_collection_modifyitems(items):
    """The heavy tests first (the order is otherwise kept): with several workers (pytest -n), the
    short tests then fill in around them, and no worker is left with a long test at the end."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)
