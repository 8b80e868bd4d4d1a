"""Paired differences over seeds, checked against scipy's paired t-test and a t interval computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from medtransfer.paired import PairedDifference, format_interval, paired_differences, paired_table, scores_from_runs

# test AUC per seed: B beats the reference by 0.03, 0.02, 0.02, 0.01 on seeds 0..3
REFERENCE = {0: 0.80, 1: 0.82, 2: 0.78, 3: 0.85}
BETTER = {0: 0.83, 1: 0.84, 2: 0.80, 3: 0.86}
T_975_DF3 = 3.182446305284263  # Student t 0.975 quantile, 3 degrees of freedom (printed tables: 3.182)


def test_fixed_example_against_a_hand_computed_t_interval():
    (d,) = paired_differences({"full": REFERENCE, "metalr": BETTER}, reference="full")
    diffs = [0.03, 0.02, 0.02, 0.01]
    mean = sum(diffs) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 3)  # = sqrt(0.0002 / 3)
    half = T_975_DF3 * std / 2  # se = std / sqrt(4)
    assert (d.strategy, d.reference, d.n) == ("metalr", "full", 4)
    assert d.mean == pytest.approx(0.02)
    assert d.std == pytest.approx(math.sqrt(0.0002 / 3))
    assert d.se == pytest.approx(std / 2)
    assert (d.low, d.high) == pytest.approx((mean - half, mean + half))
    assert (d.low, d.high) == pytest.approx((0.0070076, 0.0329924), abs=1e-6)
    # t = 0.02 / se = 4.899 with 3 dof: two-sided p from the t distribution's survival function
    assert d.p == pytest.approx(2 * stats.t.sf(mean / (std / 2), 3))
    assert 0.01 < d.p < 0.02
    assert d.seeds == (0, 1, 2, 3) and d.missing == ()
    assert format_interval(d) == "+0.020 [+0.007, +0.033]"


@pytest.mark.parametrize("confidence", [0.95, 0.9, 0.99])
def test_mean_interval_and_p_match_scipy_ttest_rel(confidence):
    rng = np.random.default_rng(7)
    seeds = range(6)
    ref = {s: float(v) for s, v in zip(seeds, rng.uniform(0.7, 0.9, 6), strict=True)}
    worse = {s: ref[s] + float(e) for s, e in zip(seeds, rng.normal(-0.01, 0.02, 6), strict=True)}
    lp = {s: ref[s] + float(e) for s, e in zip(seeds, rng.normal(0.03, 0.01, 6), strict=True)}
    diffs = paired_differences({"lp": lp, "full": ref, "worse": worse}, reference="full", confidence=confidence)
    assert [d.strategy for d in diffs] == ["lp", "worse"]
    for d, scores in zip(diffs, (lp, worse), strict=True):
        a = [scores[s] for s in seeds]
        b = [ref[s] for s in seeds]
        result = stats.ttest_rel(a, b)
        ci = result.confidence_interval(confidence_level=confidence)
        assert d.n == 6 and d.confidence == confidence
        assert d.mean == pytest.approx(np.mean(np.subtract(a, b)))
        assert d.std == pytest.approx(np.std(np.subtract(a, b), ddof=1))
        assert (d.low, d.high) == pytest.approx((ci.low, ci.high))
        assert d.p == pytest.approx(result.pvalue)


def test_pairs_by_seed_and_lists_the_unpaired_seeds():
    ref = {1: 0.70, 2: 0.75, 3: 0.90}
    other = {0: 0.10, 1: 0.80, 2: 0.80}  # seed 0 (and the reference's seed 3) would shift the mean if used
    (d,) = paired_differences({"full": ref, "llrd": other}, reference="full")
    assert d.seeds == (1, 2)
    assert d.missing == (0, 3)
    assert d.n == 2
    assert d.mean == pytest.approx(0.075)  # (0.10 + 0.05) / 2
    ci = stats.ttest_rel([0.80, 0.80], [0.70, 0.75]).confidence_interval()
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high))


def test_one_pair_gives_nan_interval_and_p_with_n_stated():
    (d,) = paired_differences({"full": {0: 0.8, 1: 0.7}, "bss": {1: 0.75}}, reference="full")
    assert d.n == 1 and d.seeds == (1,) and d.missing == (0,)
    assert d.mean == pytest.approx(0.05)
    assert all(math.isnan(x) for x in (d.std, d.low, d.high, d.p, d.se))
    assert format_interval(d) == "n/a (n=1)"


def test_no_shared_seed_is_not_an_error():
    (d,) = paired_differences({"full": {0: 0.8}, "bss": {1: 0.75}}, reference="full")
    assert d.n == 0 and d.seeds == () and d.missing == (0, 1)
    assert math.isnan(d.mean) and math.isnan(d.low) and math.isnan(d.p)
    assert format_interval(d) == "n/a (n=0)"


def test_non_finite_scores_are_skipped_and_counted_missing():
    ref = {0: 0.80, 1: 0.82, 2: 0.78, 3: 0.85, 4: float("inf")}
    better = {**BETTER, 1: float("nan"), 4: 0.9}
    (d,) = paired_differences({"full": ref, "metalr": better}, reference="full")
    assert d.seeds == (0, 2, 3)
    assert d.missing == (1, 4)
    a, b = [BETTER[s] for s in (0, 2, 3)], [REFERENCE[s] for s in (0, 2, 3)]
    result = stats.ttest_rel(a, b)
    ci = result.confidence_interval()
    assert d.mean == pytest.approx(0.02)
    assert (d.low, d.high, d.p) == pytest.approx((ci.low, ci.high, result.pvalue))


def test_unknown_reference_names_the_available_strategies():
    with pytest.raises(ValueError, match=r"'plain'.*\['full', 'metalr'\]"):
        paired_differences({"metalr": BETTER, "full": REFERENCE}, reference="plain")
    with pytest.raises(ValueError, match="confidence"):
        paired_differences({"full": REFERENCE}, reference="full", confidence=95)


def test_identical_differences_give_a_zero_width_interval_without_warnings():
    shifted = {s: v + 0.25 for s, v in {0: 0.5, 1: 0.5, 2: 0.5}.items()}
    with np.errstate(all="raise"):
        same, up = paired_differences(
            {"full": {0: 0.5, 1: 0.5, 2: 0.5}, "copy": {0: 0.5, 1: 0.5, 2: 0.5}, "up": shifted}, "full"
        )
    assert (same.low, same.high) == (0.0, 0.0) and math.isnan(same.p)
    assert (up.low, up.high) == (0.25, 0.25) and up.p == 0.0


def test_format_interval_uses_ascii_signs_and_digits():
    d = PairedDifference("lp_ft", "full", 3, 0.012, 0.01, -0.004, 0.028, 0.2, (0, 1, 2), ())
    assert format_interval(d) == "+0.012 [-0.004, +0.028]"
    assert format_interval(d, digits=2) == "+0.01 [-0.00, +0.03]"
    assert "−" not in format_interval(d)


def test_paired_table_rows_and_header():
    ref = {0: 0.80, 1: 0.82, 2: 0.78, 3: 0.85}
    diffs = paired_differences({"full": ref, "metalr": BETTER, "bss": {0: 0.7, 9: 0.8}}, reference="full")
    table = paired_table(diffs, "test AUC")
    lines = table.splitlines()
    assert lines[0] == "| strategy | n | mean test AUC difference vs full | 95 % CI | p |"
    assert len(lines) == 4
    assert lines[2].startswith("| metalr | 4 | +0.020 | [+0.007, +0.033] | 0.01")
    assert lines[3] == "| bss | 1 (left out: seed 1 2 3 9) | -0.100 | n/a | n/a |"
    with pytest.raises(ValueError, match="at least one"):
        paired_table([], "AUC")


def test_scores_from_runs_builds_the_mapping_from_outcome_rows():
    rows = [
        {"run": "full_seed0", "label": "full", "seed": 0, "auc": 0.80, "accuracy": 0.7, "flags": ""},
        {"run": "metalr_seed0", "label": "metalr", "seed": 0, "auc": 0.83, "accuracy": 0.72, "flags": ""},
        {"run": "full_seed1", "label": "full", "seed": 1, "auc": 0.82, "accuracy": 0.71, "flags": ""},
        {"run": "metalr_seed1", "label": "metalr", "seed": 1, "accuracy": 0.74, "flags": ""},  # no AUC
    ]
    scores = scores_from_runs(((r["label"], r["seed"], r) for r in rows), "auc")
    assert list(scores) == ["full", "metalr"]
    assert scores["full"] == {0: 0.80, 1: 0.82}
    assert scores["metalr"][0] == 0.83 and math.isnan(scores["metalr"][1])
    (d,) = paired_differences(scores, "full")
    assert d.seeds == (0,) and d.missing == (1,)
    with pytest.raises(ValueError, match=r"'dice'.*\['accuracy', 'auc'\]"):
        scores_from_runs(((r["label"], r["seed"], r) for r in rows), "dice")
    with pytest.raises(ValueError, match="two runs"):
        scores_from_runs([("full", 0, {"auc": 0.8}), ("full", 0, {"auc": 0.9})], "auc")
