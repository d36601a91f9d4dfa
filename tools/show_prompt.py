"""Print the chat text of benchmark, RL or SFT-chat lines exactly as the model sees it.

python tools/show_prompt.py --bench FILE --line N [--line M ...] [--mode think|direct]
                            (--layout official|interleaved | --config configs/X.py[:variant])
                            [--stage eval|sft|rl] [--json]

The text is what transformers' apply_chat_template(tokenize=False) writes for the prompt messages,
with one <|image_pad|> per image (the processor later repeats it once per image token); no image
is read. Layouts and stages: docs/prompts.md. A line of an SFT chat file ({"messages", "images"})
is printed as it stands, whatever --layout and --stage say.

With one --line the text is written exactly (no added newline); with several, each is preceded
by a "==> FILE:N <==" header line. --json prints [{"line": N, "text": ...}, ...] instead.
Exit status 2 when a line is blank, missing or skipped by the loader (its reason on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

if __package__ in (None, ""):  # run as a script: import this checkout's packages, not an installed copy
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipeline.prompts import (  # noqa: E402
    LAYOUTS, MODES, STAGES, build_messages, chat_messages, render_text, target_answer,
)
from data_pipeline.records import file_format, parse_chat_record, parse_record, scan_file  # noqa: E402


def chat_text(item, mode: str, layout: str, stage: str) -> str:
    """A record's prompt (with its training answer at stage sft, when it has one) or a chat line's conversation."""
    if not hasattr(item, "task_goal"):  # an SFT chat line carries its own text and answer
        return render_text(chat_messages(item))
    messages = build_messages(item, mode, layout=layout, stage=stage)
    answer = target_answer(item, mode) if stage == "sft" else None
    if answer is None:
        return render_text(messages, add_generation_prompt=True)
    return render_text(messages + [{"role": "assistant", "content": answer}])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", required=True, metavar="FILE",
                        help="a benchmark or RL record file (JSONL), or an SFT chat file")
    parser.add_argument("--line", type=int, action="append", required=True, metavar="N",
                        help="1-based line number in FILE, as error messages give it; repeat for several lines")
    parser.add_argument("--mode", choices=MODES, default="think",
                        help="think: four-block reasoning answer; direct: score only (default think)")
    parser.add_argument("--layout", choices=LAYOUTS, default=None,
                        help="official: the ProgressLM release's prompts, what a released checkpoint expects; "
                             "interleaved: the project's own layout (the demo jobs'); required unless --config")
    parser.add_argument("--config", default=None, metavar="configs/X.py[:variant]",
                        help="a job config: its data.prompt is the layout (e.g. configs/sft.py:paper gives official)")
    parser.add_argument("--stage", choices=STAGES, default="eval",
                        help="which official prompt: eval (evaluation harness), sft (LLaMA-Factory chat data; the "
                             "text ends with the training answer when the line has one), rl (EasyR1); ignored by "
                             "--layout interleaved (default eval)")
    parser.add_argument("--json", action="store_true",
                        help='print a JSON list of {"line": N, "text": ...} instead of the bare texts')
    args = parser.parse_args(argv)

    if args.layout is None:
        if args.config is None:
            parser.error("--layout official|interleaved is required (or --config configs/X.py[:variant] to use that "
                         "job's data.prompt): the demo jobs use interleaved, the paper variants official")
        from progress_jax.main import _load_config_file

        try:
            args.layout = _load_config_file(args.config).data.prompt
        except Exception as e:  # noqa: BLE001 - a config that does not load is one line
            parser.error(f"--config {args.config}: {e}")
    path = args.bench
    if any(n < 1 for n in args.line):
        parser.error(f"--line: line numbers start at 1, got {min(args.line)}")
    if not os.path.isfile(path):
        parser.error(f"--bench: {path} is a directory; give one JSONL file" if os.path.isdir(path) else
                     f"--bench: no such file: {path}")
    # Every line on its own: a bad line elsewhere in the file does not stop the one asked for.
    scan = scan_file(path, parse_chat_record if file_format(path) == "chat" else parse_record)
    by_line = {item.line: item for item in scan.items}
    skipped = {e.line: e for e in scan.skipped}
    bad = {e.line: e for e in scan.errors}
    out = []
    for n in args.line:
        if n in skipped:
            print(f"skipped by the loader: {skipped[n]}", file=sys.stderr)
            return 2
        if n in bad:
            print(f"bad line: {bad[n]}", file=sys.stderr)
            return 2
        if n not in by_line:
            print(f"{path}:{n}: no record on this line (blank, or past the end of the file)", file=sys.stderr)
            return 2
        try:
            out.append({"line": n, "text": chat_text(by_line[n], args.mode, args.layout, args.stage)})
        except ValueError as e:
            print(f"{path}:{n}: {e}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=1))
    elif len(out) == 1:
        sys.stdout.write(out[0]["text"])
    else:
        for item in out:
            sys.stdout.write(f"==> {path}:{item['line']} <==\n{item['text']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
