"""Schedule and optimizer (against transformers/PyTorch), guards, metrics writer and FLOP counting."""
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from progress_jax.train.guards import NonFiniteLossError, StopRequest, check_finite
from progress_jax.console import progress_bar
from progress_jax.models.flops import train_flops_per_token
from progress_jax.train.metrics_writer import MetricsWriter, mfu
from progress_jax.train.schedule import constant_schedule, cosine_schedule, make_optimizer

torch = pytest.importorskip("torch")
transformers_optimization = pytest.importorskip("transformers.optimization")


# ---- schedule and optimizer ------------------------------------------------------------------

@pytest.mark.parametrize("total,ratio", [(37, 0.1), (20, 0.0), (10, 0.25), (64, 0.03)])
def test_cosine_schedule_matches_transformers(total, ratio):
    lr = 3e-4
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    warmup = int(np.ceil(total * ratio))  # TrainingArguments.get_warmup_steps
    sched = transformers_optimization.get_cosine_schedule_with_warmup(opt, warmup, total)
    expected = []
    for _ in range(total):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    got = [float(cosine_schedule(lr, total, ratio)(s)) for s in range(total)]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7 * lr)  # float32 schedule


def toy_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"base": {"w": rng.normal(size=(5, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)},
            "lora": {"a": rng.normal(size=(5, 2)).astype(np.float32), "b": rng.normal(size=(2, 4)).astype(np.float32)}}


def toy_loss(p, x):
    h = x @ p["base"]["w"] + p["base"]["b"] + (x @ p["lora"]["a"]) @ p["lora"]["b"]
    return jnp.sum(h ** 2)


def adam_moments(opt_state):
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
    assert len(found) == 1
    return found[0]


def test_adamw_on_the_trained_leaves_matches_torch():
    """The trainers give the optimizer the trained leaves only (the LoRA factors here): AdamW with
    clipping and the cosine schedule equals torch's, and only those leaves carry moments."""
    params_np = toy_params()
    kw = dict(lr=0.05, weight_decay=0.1, warmup_ratio=0.2, total_steps=6, clip_norm=0.5, b1=0.8, b2=0.95)
    tx = make_optimizer(**kw)
    base = jax.tree.map(jnp.asarray, params_np["base"])
    trained = jax.tree.map(jnp.asarray, params_np["lora"])
    state = tx.init(trained)
    moments = adam_moments(state)
    n_trainable = params_np["lora"]["a"].size + params_np["lora"]["b"].size
    assert sum(x.size for x in jax.tree.leaves(moments.mu)) == n_trainable

    # Reference: torch AdamW on the LoRA leaves only, grad-norm clipping over them, HF cosine schedule.
    ta = torch.nn.Parameter(torch.tensor(params_np["lora"]["a"]))
    tb = torch.nn.Parameter(torch.tensor(params_np["lora"]["b"]))
    topt = torch.optim.AdamW([ta, tb], lr=kw["lr"], betas=(kw["b1"], kw["b2"]), eps=1e-8,
                             weight_decay=kw["weight_decay"])
    tsched = transformers_optimization.get_cosine_schedule_with_warmup(topt, 2, kw["total_steps"])
    tw, tbias = torch.tensor(params_np["base"]["w"]), torch.tensor(params_np["base"]["b"])

    rng = np.random.default_rng(1)
    for _ in range(kw["total_steps"]):
        x = rng.normal(size=(3, 5)).astype(np.float32)
        grads = jax.grad(lambda p: toy_loss({"base": base, "lora": p}, jnp.asarray(x)))(trained)
        updates, state = tx.update(grads, state, trained)
        trained = optax.apply_updates(trained, updates)
        topt.zero_grad()
        tx_ = torch.tensor(x)
        torch.sum((tx_ @ tw + tbias + (tx_ @ ta) @ tb) ** 2).backward()
        torch.nn.utils.clip_grad_norm_([ta, tb], 0.5)
        topt.step()
        tsched.step()
    np.testing.assert_allclose(np.asarray(trained["a"]), ta.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(trained["b"]), tb.detach().numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.asarray(trained["a"]), params_np["lora"]["a"])


def test_constant_schedule_matches_transformers():
    """train.schedule = constant (the GRPO recipe): transformers' constant schedule with warmup."""
    lr, total, ratio = 1e-3, 20, 0.1
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = transformers_optimization.get_constant_schedule_with_warmup(opt, int(np.ceil(total * ratio)))
    expected = []
    for _ in range(total):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    got = [float(constant_schedule(lr, total, ratio)(s)) for s in range(total)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert float(constant_schedule(lr, total, 0.0)(0)) == pytest.approx(lr)


def test_schedule_refuses_bad_arguments():
    with pytest.raises(ValueError, match="warmup_ratio"):
        cosine_schedule(1e-3, 10, 1.5)


# ---- guards ----------------------------------------------------------------------------------

def test_sigterm_sets_the_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_nested_stop_request_passes_the_signal_out():
    with StopRequest() as job:
        with StopRequest() as loop:
            os.kill(os.getpid(), signal.SIGTERM)
        assert loop.requested and job.requested and job.signal_name == "SIGTERM"
    with StopRequest() as job:
        with StopRequest():
            pass
        assert not job.requested


LOOP = textwrap.dedent("""
    import sys, time
    import jax.numpy as jnp
    from progress_jax.train.checkpoint import Checkpointer
    from progress_jax.train.guards import StopRequest
    with StopRequest() as stop, Checkpointer(sys.argv[1], save_every=1000, keep=2) as ckpt:
        step = 0
        while not stop.requested:
            step += 1
            if step == 3:
                print("ready", flush=True)
            time.sleep(0.01)
        ckpt.save(step, {"step": jnp.int32(step)}, metadata={"stopped_by": stop.signal_name}, force=True)
        print("saved", step, flush=True)
""")


def test_sigterm_in_a_real_loop_saves_and_exits_cleanly(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-c", LOOP, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    step = int(out.split()[-1])
    from progress_jax.train.checkpoint import Checkpointer
    with Checkpointer(str(tmp_path), save_every=1000, keep=2) as ckpt:
        assert ckpt.latest_step() == step
        state, _, meta = ckpt.restore(step, {"step": jax.ShapeDtypeStruct((), jnp.int32)})
    assert int(state["step"]) == step and meta == {"stopped_by": "SIGTERM"}


def test_non_finite_loss_names_step_and_value():
    check_finite(3, loss=jnp.float32(1.5), grad_norm=0.2)
    with pytest.raises(NonFiniteLossError, match=r"step 12: loss is nan.*last good checkpoint is step 10"):
        check_finite(12, last_good_step=10, loss=jnp.float32(np.nan))
    with pytest.raises(NonFiniteLossError, match=r"step 4: grad_norm is inf.*no checkpoint"):
        check_finite(4, loss=1.0, grad_norm=np.inf)


# ---- metrics ---------------------------------------------------------------------------------

def read_tb_scalars(log_dir):
    """Scalars from tensorboardX event files, parsed from the TFRecord framing directly."""
    from tensorboardX.proto import event_pb2
    out = {}
    for name in os.listdir(log_dir):
        if "tfevents" not in name:
            continue
        data = open(os.path.join(log_dir, name), "rb").read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out[(v.tag, event.step)] = v.simple_value
    return out


def test_metrics_jsonl_and_tensorboard(tmp_path, capsys, monkeypatch):
    with MetricsWriter(str(tmp_path)) as w:
        w.write(1, {"loss": jnp.float32(2.5), "lr": 1e-4})
        w.write(2, {"loss": np.float64(2.25), "lr": 2e-4, "grad_norm": float("nan")})
        # Flushed per line: readable while the run is still going.
        lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
        assert lines == [{"step": 1, "loss": 2.5, "lr": 1e-4},
                         {"step": 2, "loss": 2.25, "lr": 2e-4, "grad_norm": "nan"}]
        with pytest.raises(ValueError, match="'hist' at step 3 is not a scalar"):
            w.write(3, {"hist": np.ones(3)})
    tb = read_tb_scalars(tmp_path)
    assert tb[("loss", 1)] == 2.5 and tb[("loss", 2)] == 2.25
    assert tb[("lr", 2)] == pytest.approx(2e-4)
    with MetricsWriter(str(tmp_path / "other"), enabled=False) as w:
        w.write(1, {"loss": 1.0})
    assert not (tmp_path / "other").exists()
    bar = progress_bar(10, initial=4, desc="sft")  # stderr captured: not a terminal, no bar
    bar.update(1)
    bar.close()
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = progress_bar(10, initial=4, desc="sft")
    bar.update(1)
    bar.close()
    assert "sft" in capsys.readouterr().err and bar.n == 5


def test_flop_count_matches_xla_cost_analysis():
    """train_flops_per_token against XLA's own count for one transformer layer."""
    seq, d, ff = 64, 128, 512
    rng = np.random.default_rng(0)

    def layer(x, wq, wk, wv, wo, w1, w2):
        q, k, v = x @ wq, x @ wk, x @ wv
        x = x + (jax.nn.softmax(q @ k.T / np.sqrt(d), axis=-1) @ v) @ wo
        return x + jax.nn.gelu(x @ w1) @ w2

    shapes = [(seq, d)] + [(d, d)] * 4 + [(d, ff), (ff, d)]
    args = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
    n_params = sum(int(np.prod(s)) for s in shapes[1:])

    def flops(fn):
        cost = jax.jit(fn).lower(*args).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    forward = flops(layer)
    train = flops(jax.value_and_grad(lambda *a: layer(*a).sum(), argnums=tuple(range(7))))
    per_token = train_flops_per_token(n_params, n_layers=1, seq_len=seq, attn_dim=d)
    assert per_token * seq == pytest.approx(train, rel=0.03)
    assert train_flops_per_token(n_params, 1, seq, d, backward_factor=0.0) * seq == pytest.approx(forward, rel=0.03)
    # 1000 tokens/s at 6e9 FLOPs each on a 1e13 FLOP/s peak is 60% utilization.
    assert mfu(1000.0, 6e9, 1e13) == pytest.approx(0.6)
