"""CLI: python -m data_construction.sim --out DIR --size small|full|nano --seed 0 [--image-size 224] [--reasoning STYLE] [--workers N]
[--extra EPISODES [--per 8]]."""
import argparse
import logging

from data_construction.sim.build import SIZES, extra, generate
from data_construction.sim.styles import REASONING


def main(argv=None):
    ap = argparse.ArgumentParser(description="Generate ProgressBench-Sim (benchmark files and a training split).")
    ap.add_argument("--out", required=True, help="output folder (bench/ and train/ are written inside)")
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=None, help="render processes (default: CPU count, at most 8)")
    ap.add_argument("--reasoning", choices=REASONING, default="full", help="the SFT answers' style")
    ap.add_argument("--force", action="store_true", help="regenerate even if a complete output exists")
    ap.add_argument("--extra", type=int, default=0, help="instead of the sim: same-view records of this many more "
                    "training episodes (their own stream, disjoint from the benchmark of --size and --seed) in "
                    "OUT/visual_same_view.jsonl and OUT/images, for tools/skill_data.py")
    ap.add_argument("--per", type=int, default=8, help="with --extra: observations per episode (default 8)")
    args = ap.parse_args(argv)
    if args.extra < 0 or args.per < 1:
        ap.error("--extra must be >= 0 and --per >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.extra:
        print(extra(args.out, args.extra, args.size, args.seed, args.image_size, args.per, args.workers))
        return
    paths = generate(args.out, args.size, args.seed, args.image_size, args.workers, args.force, args.reasoning)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
