"""Browse a predictions file against its benchmark files: a Gradio app.

    python tools/results_viewer.py --pred RUN/eval/predictions.jsonl --bench BENCH_DIR
                                   [--image-root BENCH_DIR/images] [--port 7861]

Per sample: the demonstration (key frames, or the text steps with the ground-truth step in bold),
the observation image, the model's response, the parsed ref / score, the ground truth and the
sample's error kinds (missing, unparseable, false n/a, missed n/a, wrong ref, score error above
--threshold normalized error). Filters by setting (benchmark file) and by error kind; Previous /
Next walk the filtered samples. The logic lives in progress_jax/eval/viewer.py.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipeline.parsing import MODES  # noqa: E402
from data_pipeline.records import RecordError  # noqa: E402
from progress_jax.eval import viewer  # noqa: E402
from progress_jax.eval.predictions import PredictionError  # noqa: E402
from progress_jax.eval.viewer import SCORE_ERROR  # noqa: E402


def build_app(rows: list, image_root: str | None, threshold: float = SCORE_ERROR):
    import gradio as gr

    def show(setting: str, error: str, pos: int):
        picked = viewer.select(rows, setting, error, threshold)
        if not picked:
            return (f"### 0 of {len(rows)} samples match", "No sample matches these filters.",
                    gr.update(value=[], visible=False), None, "", 0)
        pos = max(0, min(int(pos), len(picked) - 1))
        row = rows[picked[pos]]
        frames, obs, missing = viewer.images(row, image_root)
        frames = gr.update(value=frames, visible=bool(frames))  # a text demo has no key frames: no empty gallery
        info = viewer.describe(row, threshold)
        if missing:
            info += "\n\n**Image files not found:** " + ", ".join(f"`{m}`" for m in missing)
        response = "" if row.prediction is None else (row.prediction.get("response") or
                                                      f"(no response stored; score {row.prediction.get('score')!r}, "
                                                      f"ref {row.prediction.get('ref')!r})")
        status = f"### Sample {pos + 1} of {len(picked)} (filtered from {len(rows)})"
        return status, info, frames, obs, response, pos

    counts = viewer.counts(rows, threshold)
    summary = " · ".join(f"{k}: {v}" for k, v in counts.items())
    with gr.Blocks(title="ProgressLM results viewer", analytics_enabled=False) as demo:
        gr.Markdown(f"**{len(rows)} samples** — {summary}", elem_id="summary")
        with gr.Row():
            setting = gr.Dropdown([viewer.ALL_SETTINGS] + viewer.settings(rows), value=viewer.ALL_SETTINGS,
                                  label="Setting", elem_id="setting")
            error = gr.Dropdown(list(viewer.FILTERS), value=viewer.ALL, label="Errors", elem_id="error")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            prev = gr.Button("Previous", elem_id="prev")
            nxt = gr.Button("Next", variant="primary", elem_id="next")
        pos = gr.State(0)
        with gr.Row():
            with gr.Column(scale=2):
                frames = gr.Gallery(label="Demonstration key frames", columns=4, height=260, elem_id="demo")
                info = gr.Markdown(elem_id="info")
            with gr.Column(scale=1):
                obs = gr.Image(label="Observation", type="filepath", interactive=False, height=320,
                               elem_id="observation")
        response = gr.Textbox(label="Response", lines=8, interactive=False, elem_id="response")
        outputs = [status, info, frames, obs, response, pos]
        demo.load(show, inputs=[setting, error, pos], outputs=outputs)
        setting.change(lambda s, e: show(s, e, 0), inputs=[setting, error], outputs=outputs)
        error.change(lambda s, e: show(s, e, 0), inputs=[setting, error], outputs=outputs)
        prev.click(lambda s, e, p: show(s, e, p - 1), inputs=[setting, error, pos], outputs=outputs)
        nxt.click(lambda s, e, p: show(s, e, p + 1), inputs=[setting, error, pos], outputs=outputs)
    return demo


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="tools/results_viewer.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pred", required=True, help="predictions JSONL (an eval run's predictions.jsonl)")
    ap.add_argument("--bench", nargs="+", required=True, help="benchmark JSONL files and/or directories of them")
    ap.add_argument("--image-root", default=None,
                    help="IMAGE_ROOT of the benchmark images (default: <bench dir>/images when it exists)")
    ap.add_argument("--mode", choices=MODES, default="think", help="how to parse 'response' (default think)")
    ap.add_argument("--threshold", type=float, default=SCORE_ERROR,
                    help="normalized error above which a score counts as a 'score error' "
                         f"(default {SCORE_ERROR})")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    ap.add_argument("--port", type=int, default=7861, help="port to listen on (default 7861)")
    args = ap.parse_args(argv)

    image_root = args.image_root
    if image_root is None and len(args.bench) == 1 and os.path.isdir(os.path.join(args.bench[0], "images")):
        image_root = os.path.join(args.bench[0], "images")
    if not os.path.isfile(args.pred):
        ap.error(f"--pred: no such file: {args.pred}")
    try:
        rows = viewer.load(args.pred, args.bench, args.mode)
    except (RecordError, PredictionError, ValueError, OSError) as e:  # bad input: its message, no traceback
        ap.exit(2, f"error: {e}\n")
    print(f"{len(rows)} samples; " + ", ".join(f"{k}: {v}" for k, v in viewer.counts(rows, args.threshold).items()))
    build_app(rows, image_root, args.threshold).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
