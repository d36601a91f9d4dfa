"""Metrics against hand-computed values (docs/metrics.md) and scipy-independent Spearman arithmetic."""
import math

import numpy as np
import pytest

from data_pipeline.records import Record
from progress_jax.eval.metrics import Sample, compute_metrics, na_rate, nse, prc, ref_error


def rec(source, tid, progress, closest=2, kind="visual", total_steps=4, obs=None):
    demo = tuple(f"f{i}.jpg" for i in range(total_steps + 1)) if kind == "visual" else None
    text = tuple(f"step {i}" for i in range(total_steps)) if kind == "text" else None
    return Record(source=source, line=1, id=tid, task_goal="g", visual_demo=demo, text_demo=text,
                  total_steps=total_steps, observation=obs or f"{tid}_{progress}.jpg",
                  closest_idx=None if progress is None else closest, progress=progress)


def spearman_by_hand(x, y):
    """Distinct values only: rho = 1 - 6 sum d^2 / (n (n^2 - 1))."""
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    n = len(x)
    return 1 - 6 * float(np.sum((rx - ry) ** 2)) / (n * (n * n - 1))


def test_nse_hand_computed_and_na_excluded():
    value = nse([0.2, 0.5, 0.9], [0.4, None, 0.6])
    assert value == pytest.approx((0.2 / 0.8 + 0.3 / 0.9) / 2)
    assert nse([0.5], [None]) is None
    assert nse([0.0, 1.0], [1.0, 0.0]) == pytest.approx(1.0)


def test_prc_skip_rules_and_mean():
    groups, gts, preds = [], [], []

    def add(g, pairs):
        for gt, p in pairs:
            groups.append(g), gts.append(gt), preds.append(p)

    add("A", [(0.1, 0.5), (0.4, None), (0.8, 0.2)])               # N/A dropped -> 2 left, rho = -1
    add("B", [(0.1, 0.3), (0.5, 0.3), (0.9, 0.3)])                # all predictions equal: skipped
    add("C", [(0.1, 0.3), (0.5, None)])                           # one left: skipped
    add("D", [(0.5, 0.1), (0.5, 0.7)])                            # all gts equal: skipped
    e_gt, e_pred = [0.1, 0.3, 0.6, 0.9], [0.2, 0.1, 0.8, 0.5]
    add("E", list(zip(e_gt, e_pred)))
    value, count = prc(groups, gts, preds)
    assert count == 2
    assert value == pytest.approx((-1.0 + spearman_by_hand(e_gt, e_pred)) / 2)
    assert spearman_by_hand(e_gt, e_pred) == pytest.approx(0.6)


def test_prc_undefined_when_no_trajectory_qualifies():
    assert prc(["a", "a"], [0.1, 0.2], [0.3, 0.3]) == (None, 0)
    assert prc([], [], []) == (None, 0)


def test_prc_with_ties_matches_average_rank_pearson():
    gt, pred = [0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.1, 0.4, 0.3, 0.3]
    pred_ranks = [1.5, 1.5, 5, 3.5, 3.5]  # average ranks by hand
    expected = np.corrcoef([1, 2, 3, 4, 5], pred_ranks)[0, 1]
    assert prc(["t"] * 5, gt, pred)[0] == pytest.approx(expected)


def test_rates_and_ref_error():
    assert na_rate([None, 0.2, None, 0.1]) == 0.5
    assert na_rate([]) is None
    # gt 2 of 5: max(1, 3) = 3; gt 5 of 5: max(4, 0) = 4; gt 1 of 1: denominator 0
    assert ref_error([2, 5, 3], [4, 1, None], [5, 5, 5]) == pytest.approx((2 / 3 + 4 / 4) / 2)
    assert ref_error([1, 1], [1, 2], [1, 1]) == pytest.approx(0.5)


def test_compute_metrics_files_settings_micro_macro():
    samples = [
        # same-view: trajectory t1, perfect order; one N/A
        Sample(rec("same", "t1", 0.2), 0.3, 2), Sample(rec("same", "t1", 0.6), 0.5, 3),
        Sample(rec("same", "t1", 0.8), None, None),
        # cross-view: trajectory with the SAME id t1, reversed order
        Sample(rec("cross", "t1", 0.1), 0.9, 1), Sample(rec("cross", "t1", 0.5), 0.4, 5),
        # vision unanswerable: one abstains
        Sample(rec("vis_na", "u1", None), None, None), Sample(rec("vis_na", "u2", None), 0.4, 2),
        # text
        Sample(rec("txt", "x1", 0.25, kind="text"), 0.25, 2), Sample(rec("txt", "x1", 0.75, kind="text"), 1.0, 3),
        Sample(rec("txt_na", "y1", None, kind="text"), None, None),
    ]
    m = compute_metrics(samples)
    assert list(m) == ["same", "cross", "vis_na", "txt", "txt_na", "vision", "text", "micro", "macro"]
    same = m["same"]
    assert (same["n"], same["n_answerable"], same["n_unanswerable"]) == (3, 3, 0)
    assert same["nse"] == pytest.approx(100 * (0.1 / 0.8 + 0.1 / 0.6) / 2)
    assert same["prc"] == pytest.approx(100.0) and same["afrr"] == pytest.approx(100 / 3)
    assert same["uda"] is None
    assert m["cross"]["prc"] == pytest.approx(-100.0)
    assert m["vis_na"]["uda"] == pytest.approx(50.0)
    assert m["vis_na"]["nse"] is None and m["vis_na"]["prc"] is None and m["vis_na"]["afrr"] is None

    vision = m["vision"]
    # pooled: 4 numeric answerable predictions; trajectories stay per file -> mean(1, -1) = 0
    vision_nse = (0.1 / 0.8 + 0.1 / 0.6 + 0.8 / 0.9 + 0.1 / 0.5) / 4
    assert vision["nse"] == pytest.approx(100 * vision_nse)
    assert vision["prc"] == pytest.approx(0.0) and vision["prc_trajectories"] == 2
    assert vision["afrr"] == pytest.approx(100 / 5)
    assert vision["uda"] == pytest.approx(50.0)
    assert (vision["n_answerable"], vision["n_unanswerable"]) == (5, 2)

    text = m["text"]
    text_nse = (0.0 + 0.25 / 0.75) / 2
    assert text["nse"] == pytest.approx(100 * text_nse)
    assert text["prc"] == pytest.approx(100.0) and text["afrr"] == 0.0 and text["uda"] == pytest.approx(100.0)

    assert m["macro"]["nse"] == pytest.approx(100 * (vision_nse + text_nse) / 2)
    assert m["micro"]["nse"] == pytest.approx(100 * (5 * vision_nse + 2 * text_nse) / 7)
    assert m["micro"]["afrr"] == pytest.approx(100 * (5 * 0.2 + 2 * 0.0) / 7)
    assert m["micro"]["prc"] == pytest.approx(100 * (5 * 0.0 + 2 * 1.0) / 7)
    assert m["micro"]["uda"] == pytest.approx(100 * (2 * 0.5 + 1 * 1.0) / 3)
    assert m["macro"]["uda"] == pytest.approx(75.0)
    assert m["micro"]["n_answerable"] == 7 and m["macro"]["n"] == 10


def test_single_setting_and_all_na():
    samples = [Sample(rec("v", "t", 0.2), None), Sample(rec("v", "t", 0.4), None)]
    m = compute_metrics(samples)
    assert m["v"]["nse"] is None and m["v"]["prc"] is None and m["v"]["afrr"] == 100.0
    assert m["text"]["n"] == 0 and all(m["text"][k] is None for k in ("nse", "prc", "afrr", "uda", "ref_error"))
    assert m["macro"]["afrr"] == 100.0 and m["micro"]["afrr"] == 100.0  # vision-only bench
    assert m["macro"]["nse"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for e in m.values() for v in e.values())


def test_file_stem_colliding_with_setting_key_raises():
    with pytest.raises(ValueError, match="collide"):
        compute_metrics([Sample(rec("vision", "t", 0.2), 0.2)])
