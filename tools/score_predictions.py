"""Score predictions against Progress-Bench files: this project's predictions JSONL (also from vLLM, an
API model...) or a result file of the official ProgressLM harnesses (nested meta_data).

python tools/score_predictions.py --bench DIR_OR_FILES... --pred FILE --out DIR [--mode think|direct]
Writes metrics.json, table1/table2 (.md, .csv) and figures to DIR; prints the coverage report and tables.
The coverage (samples matched, missing a prediction; predictions matching none) is in metrics.json
("coverage") and table1; predictions that match no sample at all are refused.
Layouts and matching rules: docs/formats.md.
"""
from __future__ import annotations
if __package__ in (None, ""):  # run as `python tools/X.py`: import this checkout, as `python -m tools.X` does
    import os, sys; sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import os
import sys

from data_pipeline.parsing import MODES
from data_pipeline.paths import check_outputs
from data_pipeline.records import RecordError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", nargs="+", required=True, help="benchmark JSONL files and/or directories of them")
    parser.add_argument("--pred", required=True,
                        help="predictions JSONL (setting, id, stage, [line], response or score/ref), "
                             "or an official harness result file")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--mode", choices=MODES, default="think", help="how to parse 'response' (default think)")
    parser.add_argument("--name", default=None, help="run name in the tables (default: the predictions file stem)")
    args = parser.parse_args(argv)
    # heavy (matplotlib, scipy): imported after --help
    from progress_jax.eval.predictions import PredictionError, load_bench, read_predictions, score, write_results

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out} is a file; it names the directory to write metrics.json, tables and figures in")
    written = ("metrics.json", "table1.md", "table1.csv", "table2.md", "table2.csv", "score_histograms.png",
               "error_distributions.png", "coupling.png")  # by write_results
    check_outputs({"--out": [os.path.join(args.out, n) for n in written]}, {"--bench": args.bench, "--pred": args.pred})

    try:
        bench = load_bench(args.bench)  # refuses missing and empty benchmark files before anything is written
        pred_file = read_predictions(args.pred, bench)
    except (RecordError, PredictionError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = score(bench, (obj for _, obj in pred_file.lines), mode=args.mode)
    if result.report.matched == 0:
        n = len(pred_file.lines) + len(pred_file.unmatched)
        print(f"error: {args.pred}: none of its {n} prediction(s) matches one of the {result.report.n_bench} samples "
              f"of {' '.join(args.bench)} (another benchmark's predictions?); nothing written", file=sys.stderr)
        return 2
    if pred_file.truncated_line is not None:
        print(f"{args.pred}:{pred_file.truncated_line}: truncated last line ignored")
    if pred_file.format == "results":
        print(f"{args.pred}: official result file, {len(pred_file.lines)} line(s) matched to benchmark samples "
              "(scored from their 'score' / 'predicted_score' field, as eval/metric.py does)")
    if pred_file.unmatched:
        shown = ", ".join(map(str, pred_file.unmatched[:5])) + (" ..." if len(pred_file.unmatched) > 5 else "")
        print(f"{args.pred}: {len(pred_file.unmatched)} result line(s) match no benchmark sample (ignored): lines {shown}")
    for line in result.report.lines():
        print(line)
    name = args.name or os.path.splitext(os.path.basename(args.pred))[0]
    print(write_results(result, args.out, name))
    print(f"wrote metrics.json, tables and figures to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
