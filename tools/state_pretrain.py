"""Teach a model's vision tower what a ProgressBench-Sim scene's state is: regress it from single frames.

python tools/state_pretrain.py --out RUN [--init RUN0/final] [--preset nano] [--episodes 2000]
                               [--steps 3000] [--lr 1e-3] [--batch 32] [--target head|tokens]

Frames of sim training episodes (their own stream, `train_extra`, goals off the benchmark's as the
training split's), each from a random camera at a random moment, and the scene's state there
(`SimEpisode.state_at`, in world coordinates): where each arm's gripper is and how wide it is open,
how far the drawer is out, and where the object the task moves is. The vision tower's merged image
tokens (what the language model receives) feed one linear layer; tower and layer are trained on the
standardised state, mean squared error over the parts a scene has (a one-arm scene has no second
gripper). Held-out R^2 per part is printed every --eval-every steps, on frames of the test split's
same-view episodes (`bench_same`: scenes never trained on): whether the tower can learn to see the
scene's state, and how fast.

--target tokens trains the tokens themselves instead: every merged image token towards the same
fixed random embedding of the standardised state (no head; R^2 read from the mean token through the
embedding's pseudo-inverse). The tokens of one frame then agree, and two frames' tokens differ by
what differs in their scenes, not by a small part of shared content.

Writes RUN/final (as an SFT run's final/, loadable by `--config.train.init_params`): --init's
trained parameters with the tower replaced by the one trained here, or the tower alone without
--init (the language model keeps the preset's seed). Why: docs/learning.md, "The closest frame".
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

if __package__ in (None, ""):  # run as a script: import this checkout's packages, not an installed copy
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The state's parts, their columns in the target vector.
PARTS = {"gripper 1": slice(0, 3), "opening 1": slice(3, 4), "gripper 2": slice(4, 7), "opening 2": slice(7, 8),
         "drawer": slice(8, 9), "object": slice(9, 12)}
WIDTH = 12
# --target tokens: the state embedding's entries have variance TOKEN_VARIANCE / width, so a token's norm
# is about 1.6 x the root of the state parts a scene has; the loss is divided by it back to the state's scale.
TOKEN_VARIANCE = 2.5


def state_vector(episode, t: int) -> tuple[np.ndarray, np.ndarray]:
    """(target [12], mask [12]) of frame t: the parts the scene lacks are masked out."""
    s = episode.state_at(t)
    y, m = np.zeros(WIDTH, np.float32), np.zeros(WIDTH, np.float32)
    for arm in (0, 1):
        if f"grip:{arm}" in s:
            y[4 * arm:4 * arm + 3], y[4 * arm + 3] = s[f"grip:{arm}"], np.ravel(s[f"width:{arm}"])[0]
            m[4 * arm:4 * arm + 4] = 1
    if "drawer" in s:
        y[8], m[8] = np.ravel(s["drawer"])[0], 1
    y[9:12], m[9:12] = s[f"pos:{episode.plan.manip}"], 1
    return y, m


def frames(stream: str, episodes: int, per: int, size: str, seed: int, image_size: int):
    """(images [N, H, W, 3] uint8, targets [N, 12], masks [N, 12]) of `per` random frames of each of
    `episodes` episodes of `stream` (training streams avoid the benchmark's goals)."""
    from data_construction.sim.build import goals_of, make_episode, plan_bench

    goals = goals_of(plan_bench(size, seed, image_size)) if stream.startswith("train") else frozenset()
    images, ys, ms = [], [], []
    for i in range(episodes):
        episode = make_episode(stream, i, seed, image_size, goals)
        rng = np.random.default_rng([seed, i, 7])
        for _ in range(per):
            camera, t = episode.cameras[int(rng.integers(len(episode.cameras)))], int(rng.integers(episode.num_frames))
            y, m = state_vector(episode, t)
            images.append(np.asarray(episode.frame(camera, t).convert("RGB"), np.uint8))
            ys.append(y)
            ms.append(m)
    return np.stack(images), np.stack(ys), np.stack(ms)


def r_squared(pred: np.ndarray, y: np.ndarray, m: np.ndarray) -> dict[str, float]:
    """1 - residual / variance per part, over the frames whose scene has it."""
    out = {}
    for name, cols in PARTS.items():
        mm = m[:, cols]
        if mm.sum() == 0:
            continue
        mean = (y[:, cols] * mm).sum(0) / mm.sum(0)
        var = (((y[:, cols] - mean) ** 2) * mm).sum()
        out[name] = float(1 - (((pred[:, cols] - y[:, cols]) ** 2) * mm).sum() / max(var, 1e-12))
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="run directory; the weights go to OUT/final")
    ap.add_argument("--init", default="", help="an SFT run's final/ whose language model to keep (default: the preset's seed)")
    ap.add_argument("--preset", default="nano", help="the model preset (default nano; --init's own preset wins)")
    ap.add_argument("--episodes", type=int, default=2000, help="training episodes (default 2000)")
    ap.add_argument("--per", type=int, default=8, help="frames per episode (default 8)")
    ap.add_argument("--test-episodes", type=int, default=150, help="held-out episodes of the test split (default 150)")
    ap.add_argument("--steps", type=int, default=3000, help="optimizer steps (default 3000)")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default 1e-3)")
    ap.add_argument("--batch", type=int, default=32, help="frames per step (default 32)")
    ap.add_argument("--eval-every", type=int, default=500, help="steps between held-out R^2 lines (default 500)")
    ap.add_argument("--size", default="nano", help="the sim size whose benchmark the training goals avoid (default nano)")
    ap.add_argument("--sim-seed", type=int, default=0, help="the sim seed (default 0)")
    ap.add_argument("--image-size", type=int, default=112, help="frames of this many pixels a side (default 112)")
    ap.add_argument("--seed", type=int, default=0, help="the model's and the batches' seed (default 0)")
    ap.add_argument("--target", default="head", choices=("head", "tokens"),
                    help="head: a linear layer reads the state from the tokens; tokens: every image token is "
                         "trained to be a fixed random embedding of the state (default head)")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if min(args.episodes, args.per, args.test_episodes, args.steps, args.batch, args.eval_every) < 1:
        parser().error("--episodes, --per, --test-episodes, --steps, --batch and --eval-every must be >= 1")
    if args.episodes * args.per < args.batch or args.test_episodes * args.per < args.batch:
        parser().error("--episodes x --per and --test-episodes x --per must each give at least --batch frames")
    start = time.time()
    x, y, m = frames("train_extra", args.episodes, args.per, args.size, args.sim_seed, args.image_size)
    xt, yt, mt = frames("bench_same", args.test_episodes, args.per, args.size, args.sim_seed, args.image_size)
    print(f"{len(x)} training and {len(xt)} held-out frames rendered in {time.time() - start:.0f} s", flush=True)

    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from configs import sft as sft_config
    from data_pipeline.image_processor import preprocess
    from progress_jax import handover, loading
    from progress_jax.sharding import path_str

    cfg = sft_config.get_config("nano")
    with cfg.unlocked():
        cfg.seed = args.seed
        cfg.model.preset = handover.read_meta(args.init).get("model_preset", args.preset) if args.init else args.preset
    model = loading.load_policy(cfg, None, args.init)
    batch = args.batch

    def pixels(images):
        return preprocess(list(images), min_pixels=args.image_size ** 2, max_pixels=args.image_size ** 2)

    first, grid = pixels(x[:batch])
    c = model.config
    tokens = first.shape[0] // batch // c.vision.spatial_merge_size ** 2  # one image's merged tokens
    ids = np.array([[c.vision_start_token_id, *[c.image_token_id] * tokens, c.vision_end_token_id] * batch])
    vis = jax.tree.map(jnp.asarray, model.prepare(ids, None, first, grid)["vision"])  # the tower's index arrays
    width = c.vision.out_hidden_size
    mean = (y * m).sum(0) / np.maximum(m.sum(0), 1)
    scale = np.sqrt((((y - mean) * m) ** 2).sum(0) / np.maximum(m.sum(0), 1)) + 1e-6
    graph, tower = nnx.split(model.visual)
    if args.target == "tokens":
        embed = jnp.asarray(np.random.default_rng([args.seed, 11]).normal(0, (TOKEN_VARIANCE / width) ** 0.5,
                                                                           (WIDTH, width)), jnp.float32)
        unembed = jnp.linalg.pinv(embed)
        params = {"tower": tower}
    else:
        params = {"tower": tower, "head": {"w": jnp.zeros((tokens * width, WIDTH)), "b": jnp.zeros(WIDTH)}}
    opt = optax.adam(args.lr)
    opt_state = opt.init(params)

    def tokens_of(p, pv):
        return nnx.merge(graph, p["tower"])(pv, vis).reshape(batch, tokens, width)

    def predict(p, pv):
        if args.target == "tokens":
            return tokens_of(p, pv).mean(1) @ unembed
        return tokens_of(p, pv).reshape(batch, -1) @ p["head"]["w"] + p["head"]["b"]

    def loss(p, pv, target, mask):
        if args.target == "tokens":  # the parts a scene lacks are 0 in the state embedded
            return ((tokens_of(p, pv) - ((target * mask) @ embed)[:, None]) ** 2).sum(-1).mean() / TOKEN_VARIANCE
        return (((predict(p, pv) - target) ** 2) * mask).sum() / mask.sum()

    @jax.jit
    def step(p, s, pv, target, mask):
        value, grads = jax.value_and_grad(loss)(p, pv, target, mask)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    predict_jit = jax.jit(predict)

    def held_out(p) -> str:
        n = len(xt) // batch * batch
        pred = np.concatenate([np.asarray(predict_jit(p, jnp.asarray(pixels(xt[i:i + batch])[0])))
                               for i in range(0, n, batch)])
        r2 = r_squared(pred, (yt[:n] - mean) / scale, mt[:n])
        return "held-out R^2 " + ", ".join(f"{k} {v:.2f}" for k, v in r2.items())

    rng = np.random.default_rng(args.seed)
    window = []
    for it in range(1, args.steps + 1):
        idx = rng.integers(0, len(x), batch)
        params, opt_state, value = step(params, opt_state, jnp.asarray(pixels(x[idx])[0]),
                                        jnp.asarray((y[idx] - mean) / scale), jnp.asarray(m[idx]))
        window.append(float(value))
        if it % args.eval_every == 0 or it == args.steps:
            print(f"step {it}  loss {np.mean(window):.3f}  {held_out(params)}  {time.time() - start:.0f} s", flush=True)
            window = []
    nnx.update(model.visual, params["tower"])
    trained = handover.load_trainable(args.init)[0] if args.init else {}
    for path, var in nnx.to_flat_state(nnx.state(model.visual)):
        trained["visual/" + path_str(path)] = np.asarray(var.get_value())
    final = handover.save_trainable(os.path.join(args.out, "final"), trained, handover.run_meta(cfg, args.steps))
    print(f"wrote {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
