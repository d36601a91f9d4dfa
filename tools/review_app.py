"""Human review of edited (visual-unanswerable) samples: a Gradio app, and applying the decisions.

    python -m tools.review_app serve --queue review_queue.jsonl --decisions decisions.jsonl [--port 7860]
    python -m tools.review_app apply --queue review_queue.jsonl --decisions decisions.jsonl \
        --out visual-unanswerable.jsonl [--allow-undecided]

The app shows the original and the edited observation side by side with the goal, the steps (the
matching one in bold), the strategy and the instruction, and Keep / Discard buttons. Each click
appends a line to the decisions file, flushed and fsynced before the next sample is shown, so a
crash loses nothing; a restarted app opens at the first undecided sample. A click decides the
sample its page showed (its key travels with the page), never whatever is current on the server.
"""
from __future__ import annotations
if __package__ in (None, ""):  # run as `python tools/X.py`: import this checkout, as `python -m tools.X` does
    import os, sys; sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import html
import json
import threading

from PIL import Image

from data_construction.unanswerable import apply_decisions, decision_line, first_undecided, load_decisions, load_queue
from data_pipeline.jsonl import JsonlAppender
from data_pipeline.paths import check_outputs


class Review:
    """The queue, the decisions so far and the decisions file, shared by the app's handlers."""

    def __init__(self, queue_path: str, decisions_path: str):
        self.queue = load_queue(queue_path)
        self.decisions = load_decisions(decisions_path)
        self._writer = JsonlAppender(decisions_path, fsync=True)
        self._lock = threading.Lock()

    def decide(self, key: str, decision: str) -> None:
        if key not in {e["key"] for e in self.queue}:
            raise ValueError(f"key {key!r} is not in the queue")
        with self._lock:
            self._writer.write(decision_line(key, decision))
            self.decisions[key] = decision

    def current(self) -> dict | None:
        i = first_undecided(self.queue, self.decisions)
        return None if i is None else self.queue[i]

    def close(self) -> None:
        self._writer.close()


def describe(entry: dict, review: Review) -> str:
    steps = entry.get("steps") or []
    k = entry.get("matching_step")
    lines = [f"**Goal:** {html.escape(entry.get('goal', ''))}", ""]
    if steps:
        lines.append("**Steps** (key frame k ends step k-1):")
        for i, s in enumerate(steps, start=1):
            text = html.escape(s)
            lines.append(f"{i}. **{text}** (matching)" if k is not None and i == k - 1 else f"{i}. {text}")
        lines.append("")
    lines += [f"**Matching key frame:** {k}", f"**Strategy:** {entry['strategy']}",
              f"**Instruction:** {html.escape(entry['instruction'])}", f"**Sample:** `{entry['key']}`"]
    return "\n".join(lines)


def _status(review: Review) -> str:
    n, done = len(review.queue), len(review.decisions)
    kept = sum(d == "keep" for d in review.decisions.values())
    return f"### {done} of {n} decided ({kept} kept, {done - kept} discarded)"


def build_app(review: Review):
    import gradio as gr

    def show():
        entry = review.current()
        if entry is None:
            return (_status(review) + "\n\nAll samples are decided: run `python -m tools.review_app apply`.",
                    None, None, "", "", gr.update(interactive=False), gr.update(interactive=False))
        with Image.open(entry["original_image"]) as a, Image.open(entry["edited_image"]) as b:
            original, edited = a.convert("RGB"), b.convert("RGB")
        return (_status(review), original, edited, describe(entry, review), entry["key"],
                gr.update(interactive=True), gr.update(interactive=True))

    def decide(key: str, decision: str):
        if key:
            review.decide(key, decision)
        return show()

    with gr.Blocks(title="Review edited samples", analytics_enabled=False) as demo:
        status = gr.Markdown()
        with gr.Row():
            original = gr.Image(label="Original", type="pil", interactive=False, elem_id="original")
            edited = gr.Image(label="Edited", type="pil", interactive=False, elem_id="edited")
        info = gr.Markdown(elem_id="info")
        key = gr.State("")
        with gr.Row():
            keep = gr.Button("Keep", variant="primary", elem_id="keep")
            discard = gr.Button("Discard", variant="stop", elem_id="discard")
        outputs = [status, original, edited, info, key, keep, discard]
        demo.load(show, outputs=outputs)
        keep.click(lambda k: decide(k, "keep"), inputs=key, outputs=outputs)
        discard.click(lambda k: decide(k, "discard"), inputs=key, outputs=outputs)
    return demo


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the review web app")
    apply = sub.add_parser("apply", help="write the kept records as the final benchmark file")
    for p in (serve, apply):
        p.add_argument("--queue", required=True, help="review queue JSONL written by make_unanswerable.py image")
        p.add_argument("--decisions", required=True, help="decisions JSONL (appended by the app, one line per click)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    apply.add_argument("--out", required=True, help="final benchmark JSONL: the kept records (rewritten)")
    apply.add_argument("--allow-undecided", action="store_true", help="leave undecided samples out instead of failing")
    args = ap.parse_args(argv)
    try:  # a bad queue or decisions line (named by file and line), undecided samples: one line
        if args.command == "apply":
            check_outputs({"--out": args.out}, {"--queue": args.queue, "--decisions": args.decisions})
            counts = apply_decisions(load_queue(args.queue), load_decisions(args.decisions), args.out,
                                     args.allow_undecided)
            print(json.dumps(counts))
            return counts
        check_outputs({"--decisions": args.decisions}, {"--queue": args.queue})
        review = Review(args.queue, args.decisions)
    except (ValueError, OSError) as e:
        raise SystemExit(str(e)) from None
    try:
        build_app(review).launch(server_name=args.host, server_port=args.port)
    finally:
        review.close()


if __name__ == "__main__":
    main()
