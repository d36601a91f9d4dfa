"""Every command-line tool in tools/ runs both as `python tools/X.py` (from any directory) and as
`python -m tools.X` (from the repository root): `--help` exits 0 with its usage either way, and
imports none of the heavy libraries (JAX, torch, scipy...): those are imported after parsing."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "tools"))
               if f.endswith(".py") and '__name__ == "__main__"' in open(os.path.join(ROOT, "tools", f)).read())
MODES = ("script", "module")
HEAVY = {"jax", "flax", "torch", "transformers", "gradio", "scipy", "matplotlib", "grain"}


def _help(tool: str, mode: str, cwd: str) -> subprocess.CompletedProcess:
    cmd = ([sys.executable, "-X", "importtime", os.path.join(ROOT, "tools", tool + ".py"), "--help"]
           if mode == "script" else [sys.executable, "-X", "importtime", "-m", f"tools.{tool}", "--help"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(cmd, cwd=ROOT if mode == "module" else cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """All runs at once, four at a time."""
    cwd = str(tmp_path_factory.mktemp("elsewhere"))
    runs = [(tool, mode) for tool in TOOLS for mode in MODES]
    with ThreadPoolExecutor(4) as pool:
        return dict(zip(runs, pool.map(lambda r: _help(*r, cwd), runs)))


def test_every_tool_is_found():
    assert {"convert_checkpoint", "make_unanswerable", "review_app", "score_predictions"} <= set(TOOLS)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tool", TOOLS)
def test_help(results, tool, mode):
    proc = results[tool, mode]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:")
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}  # -X importtime's report: one line per module
    assert not imported & HEAVY, f"--help imports {sorted(imported & HEAVY)}: import them after parsing"
