"""Entry point: `python -m progress_jax.main --config configs/X.py[:variant] [--config.a.b=value ...]`.

The config file's `get_config(variant)` returns an ml_collections ConfigDict whose `job` field names
the job (sft, grpo, eval, demo); the variant after ':' is `demo` (the default) or `paper`.
`--print_config` prints the checked config as JSON and exits, loading no model and no data.
`--verbose` also shows other libraries' INFO records (absl, Orbax, JAX), hidden by default.
`--dry_run [--json]` compiles the job's programs for the configured mesh on an abstract model (no
weights, no data) and prints their memory, FLOPs and compile time per device (progress_jax/dry_run.py).
A mistake in the command line (an unknown key, a value of the wrong type) is one line on stderr
naming the full key, exit status 2. A list-valued key takes comma-separated values
(`--config.data.train_files=a.jsonl,b.jsonl`) or tuple syntax (`'("a.jsonl", "b.jsonl")'`).
"""

from __future__ import annotations

import difflib
import importlib
import json
import sys

from absl import app, flags
from ml_collections import config_flags

from progress_jax import config_check, console, errors

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A job config, configs/X.py[:demo|:paper]; override keys with --config.a.b=value; "
    "see the resolved values with --print_config.", lock_config=True)
_PRINT = flags.DEFINE_bool("print_config", False, "Print the resolved, checked config as JSON on stdout and exit "
                           "(no model or data is loaded).")

_DRY = flags.DEFINE_bool("dry_run", False, "Compile the job's programs for the configured mesh and the largest "
                         "bucket shapes on an abstract model (no weights, no data) and print, per device, their "
                         "memory, FLOPs, compile time and whether they fit train.device_memory_gb; then exit.")
_JSON = flags.DEFINE_bool("json", False, "With --dry_run: print the report as JSON ({\"programs\": [...]}).")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Also show other libraries' INFO records (absl, Orbax, JAX); by "
                             "default the console holds the job's own messages and the progress bar.")

JOBS = {
    "sft": "progress_jax.train.sft",
    "grpo": "progress_jax.train.grpo",
    "eval": "progress_jax.eval.runner",
    "demo": "progress_jax.demo",
}
assert set(JOBS) == set(config_check.JOBS)


def run(config) -> dict | None:
    from progress_jax import data_files, distributed, run_lock

    distributed.maybe_initialize_distributed()  # before anything asks JAX for its process count
    config_check.check(config)
    data_files.check_training_images(config)  # in a second, before the run directory exists
    with run_lock.hold(run_lock.job_directory(config)):  # one job per run directory
        return importlib.import_module(JOBS[config.job]).run(config)


def resolved(config) -> dict:
    """The config as plain JSON-able data, references resolved."""
    return json.loads(config.copy_and_resolve_references().to_json_best_effort())


# ---- one-line errors for command-line mistakes ---------------------------------------------------

def _load_config_file(spec: str):
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_progress_jax_config", path)
    if module_spec is None or not path.endswith(".py"):
        raise ValueError(f"--config {spec}: not a Python config file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def _keys(config, prefix=""):
    for k, v in config.items():
        yield prefix + k
        if hasattr(v, "items"):
            yield from _keys(v, f"{prefix}{k}.")


def _value(config, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def list_value(key: str, text: str, default) -> str:
    """`a.jsonl,b.jsonl` for a list-valued key -> the tuple literal the flag parser reads
    (`('a.jsonl', 'b.jsonl')`; `2048,4096` -> `(2048, 4096)`, elements of the default's type).
    Tuple and list syntax pass as they are."""
    if text.lstrip().startswith(("(", "[")):
        return text
    kind = type(default[0]) if len(default) else str
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return repr(tuple(kind(p) for p in parts))
    except ValueError:
        raise ValueError(f"--config.{key}={text}: expected comma-separated {kind.__name__} values") from None


def check_overrides(argv: list[str]) -> tuple[str | None, list[str]]:
    """(a one-line message for a config file that does not load or the first `--config.KEY` that
    the config does not hold, else None; argv with comma-separated values of list-valued keys
    written as tuples, and only the last of a key given more than once)."""
    spec, overrides = None, []
    for i, a in enumerate(argv[1:], start=1):
        if a.startswith("--config="):
            spec = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
        elif a.startswith("--config."):
            overrides.append((i, *a[len("--config."):].split("=", 1)))
    if spec is None:
        return None, argv
    try:
        config = _load_config_file(spec)
    except Exception as e:  # noqa: BLE001 - reported as one line
        return f"--config {spec}: {e}", argv
    keys = set(_keys(config))
    argv = list(argv)
    last = {key: i for i, key, *_ in overrides}
    drop = set()
    for i, key, *value in overrides:
        if key not in keys:
            close = difflib.get_close_matches(key, sorted(keys), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            return f"unknown config key {key} in --config.{key}{hint} (see --print_config for every key)", argv
        default = _value(config, key)
        if i != last[key]:  # absl joins a list-valued key's occurrences; for every key the last one wins
            drop.add(i)
            if not value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                drop.add(i + 1)  # its value, given as the next argument
        elif value and isinstance(default, (tuple, list)):
            try:
                argv[i] = f"--config.{key}={list_value(key, value[0], default)}"
            except ValueError as e:
                return str(e), argv
    return None, [a for i, a in enumerate(argv) if i not in drop]


def _parse_flags(argv):
    problem, argv = check_overrides(argv)
    if problem is None:
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            problem = " ".join(str(e).split()) or type(e).__name__
    print(f"error: {problem}", file=sys.stderr)
    sys.exit(2)


def _main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config configs/grpo.py (or configs/grpo.py:paper); "
                             "--print_config shows the resolved values")
    config = _CONFIG.value
    try:
        config_check.check(config, runnable=not _PRINT.value)
    except config_check.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if _PRINT.value:
        print(json.dumps(resolved(config), indent=2))
        return
    console.setup(_VERBOSE.value)
    if _DRY.value:
        dry(config, _JSON.value)
        return
    errors.one_line(run, config, verbose=_VERBOSE.value)


def dry(config, as_json: bool = False) -> list[dict]:
    """--dry_run: print the compiled programs' report (a table, or JSON) on stdout."""
    from progress_jax import dry_run

    try:
        programs = dry_run.dry_run(config)
    except (ValueError, FileNotFoundError) as e:  # a config key, the mesh, model.path's config.json
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    limit = config.train.device_memory_gb
    print(dry_run.to_json(programs) if as_json else dry_run.table(programs, limit), flush=True)
    return programs


def main() -> None:
    app.run(_main, flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
