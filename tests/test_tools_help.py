"""Every tool's --help describes every flag: each tool's argparse parser (captured when its main()
parses, subcommands included) has a description and a help text for each option and positional."""
import argparse
import glob
import importlib
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "tools", "*.py"))
               if "def main(" in open(p, encoding="utf-8").read())


class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def _parser_of(name: str, monkeypatch) -> argparse.ArgumentParser:
    module = importlib.import_module(f"tools.{name}")

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(sys, "argv", [f"tools/{name}.py", "--help"])
    try:
        module.main()
    except _Captured as c:
        return c.parser
    raise AssertionError(f"tools/{name}.py: main() returned without parsing arguments")


def _undocumented(parser: argparse.ArgumentParser, where: str, top: bool = True) -> list[str]:
    """Problems of a parser; a subcommand is described by its help line in the parent's listing."""
    bad = [] if not top or (parser.description or "").strip() else [f"{where}: no description"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest for a in action._choices_actions if (a.help or "").strip()}
            for command, sub in action.choices.items():
                if command not in helped:
                    bad.append(f"{where} {command}: subcommand without help")
                bad += _undocumented(sub, f"{where} {command}", top=False)
        elif action.help is not argparse.SUPPRESS and not (action.help or "").strip():
            bad.append(f"{where}: {name} has no help text")
    return bad


def test_tools_are_found():
    assert {"export", "convert_checkpoint", "review_app", "bench_train", "score_predictions"} <= set(TOOLS)


@pytest.mark.parametrize("name", TOOLS)
def test_every_flag_has_help(name, monkeypatch):
    parser = _parser_of(name, monkeypatch)
    assert _undocumented(parser, f"tools/{name}.py") == []


def test_checker_catches_a_bare_flag():
    assert _undocumented(argparse.ArgumentParser(), "t") == ["t: no description"]
    p = argparse.ArgumentParser(description="x")
    p.add_argument("--ok", help="fine")
    p.add_argument("--bare")
    sub = p.add_subparsers().add_parser("go", description="y")
    sub.add_argument("target")
    assert _undocumented(p, "t") == ["t: --bare has no help text", "t go: subcommand without help",
                                     "t go: target has no help text"]
