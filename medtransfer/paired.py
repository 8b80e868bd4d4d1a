"""Paired differences between fine-tuning strategies over seeds: is one strategy better than a reference?

A comparison runs every strategy once per seed, and runs of the same seed share the data split, the initialisation of
the new head and the order of the batches. So the score of a seed is partly the seed's (an easy split lifts every
strategy), and "mean ± std over seeds" per strategy mixes that shared part into both spreads: two strategies whose
± std intervals overlap may still differ consistently on every seed, and intervals that do not overlap say nothing
about how sure that difference is. The question "is strategy A better than the reference?" is answered by the
seed-matched differences A(seed) − reference(seed): their mean, a t confidence interval on it and a paired t-test
p-value. The shared part of each seed cancels in the difference, so the interval is usually much narrower than the
per-strategy spreads suggest (and it is honest when it is not).

Only seeds that both strategies finished with a finite score are paired; the others are listed (``missing``) rather
than silently dropped. With fewer than two pairs there is no spread to estimate: the interval and p are NaN and the
number of pairs is stated. With few seeds (3 to 5) the t quantile is large (4.30 for n = 3 at 95 %), so an interval
that excludes zero is already a clear sign; one that includes zero means "not shown with these seeds", not "equal".
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from medtransfer.report import format_p, markdown_table

__all__ = ["PairedDifference", "format_interval", "paired_differences", "paired_table", "scores_from_runs"]

Seed = int | str


@dataclass(frozen=True)
class PairedDifference:
    """Seed-matched differences ``strategy − reference`` of one metric, summarised.

    ``std`` is the sample standard deviation (ddof=1) of the per-seed differences; ``low``/``high`` the two-sided
    ``confidence`` t interval of their mean; ``p`` the two-sided paired t-test p-value of "mean difference is 0".
    ``seeds`` are the paired seeds, ``missing`` the seeds left out (present on one side only, or with a non-finite
    score on either side). With ``n < 2`` the std, interval and p are NaN (with ``n = 0`` the mean too).
    """

    strategy: str
    reference: str
    n: int
    mean: float
    std: float
    low: float
    high: float
    p: float
    seeds: tuple[Seed, ...]
    missing: tuple[Seed, ...]
    confidence: float = 0.95

    @property
    def se(self) -> float:
        """Standard error of the mean difference, ``std / sqrt(n)`` (NaN when ``n < 2``)."""
        return self.std / math.sqrt(self.n) if self.n >= 2 else math.nan


def _seed_order(seed: Seed) -> tuple[bool, Seed]:
    """Sort integers before strings, each in their own order (seeds read from JSON keys may be strings)."""
    return (isinstance(seed, str), seed)


def _finite(value: object) -> bool:
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _summarise(
    strategy: str, reference: str, seeds: Sequence[Seed], missing: Sequence[Seed], diffs: np.ndarray, confidence: float
) -> PairedDifference:
    n = int(diffs.size)
    nan = math.nan
    mean = float(diffs.mean()) if n else nan
    if n < 2:
        std = low = high = p = nan
    else:
        std = float(diffs.std(ddof=1))
        if std == 0.0:  # identical differences: no spread, the t statistic is 0/0 or ±inf
            low = high = mean
            p = nan if mean == 0.0 else 0.0
        else:
            half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
            low, high = mean - half, mean + half
            p = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return PairedDifference(
        strategy=strategy,
        reference=reference,
        n=n,
        mean=mean,
        std=std,
        low=low,
        high=high,
        p=p,
        seeds=tuple(seeds),
        missing=tuple(missing),
        confidence=confidence,
    )


def paired_differences(
    scores: Mapping[str, Mapping[Seed, float]], reference: str, confidence: float = 0.95
) -> list[PairedDifference]:
    """Every strategy against ``reference``, paired by seed.

    Args:
        scores: ``scores[strategy][seed]`` is the metric of that strategy's run with that seed (e.g. test AUC), as
            :func:`scores_from_runs` builds it. Seeds are matched by equality, so ``0`` and ``"0"`` are different.
        reference: the strategy the others are compared with (e.g. plain fine-tuning, ``"full"``).
        confidence: the two-sided confidence level of the t interval, in (0, 1).

    Returns:
        One :class:`PairedDifference` per strategy other than ``reference``, in the order of ``scores``. A strategy
        sharing fewer than two finite-scored seeds with the reference gets NaN interval and p (not an error).

    Raises:
        ValueError: ``reference`` is not in ``scores`` (the message names the strategies that are), or
            ``confidence`` is not in (0, 1).
    """
    if reference not in scores:
        raise ValueError(f"reference strategy {reference!r} has no scores; available strategies: {sorted(scores)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    ref = scores[reference]
    out = []
    for strategy, values in scores.items():
        if strategy == reference:
            continue
        both = set(values) & set(ref)
        paired = sorted((s for s in both if _finite(values[s]) and _finite(ref[s])), key=_seed_order)
        missing = sorted((set(values) | set(ref)) - set(paired), key=_seed_order)
        diffs = np.array([float(values[s]) - float(ref[s]) for s in paired], dtype=np.float64)
        out.append(_summarise(strategy, reference, paired, missing, diffs, confidence))
    return out


def format_interval(d: PairedDifference, digits: int = 3) -> str:
    """The mean difference and its interval as signed numbers, e.g. ``+0.012 [-0.004, +0.028]``.

    Args:
        d: a paired difference from :func:`paired_differences`.
        digits: decimals of every number.

    Returns:
        ``"<mean> [<low>, <high>]"``, or ``"n/a (n=<n>)"`` when fewer than two seeds were paired.
    """
    if d.n < 2:
        return f"n/a (n={d.n})"
    return f"{d.mean:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]"


def _n_cell(d: PairedDifference) -> str:
    if not d.missing:
        return str(d.n)
    return f"{d.n} (left out: seed {' '.join(str(s) for s in d.missing)})"


def paired_table(diffs: Sequence[PairedDifference], metric: str) -> str:
    """A Markdown table of paired differences against one reference: strategy | n | mean difference | CI | p.

    Args:
        diffs: the result of :func:`paired_differences` (all against the same reference, at the same confidence).
        metric: the metric's name for the header (e.g. ``"test AUC"``).

    Returns:
        The table; the n column names the seeds left out, rows with fewer than two pairs read ``n/a``.

    Raises:
        ValueError: ``diffs`` is empty, or mixes references or confidence levels (one header cannot name them).
    """
    if not diffs:
        raise ValueError("paired_table needs at least one paired difference")
    references = {d.reference for d in diffs}
    levels = {d.confidence for d in diffs}
    if len(references) > 1 or len(levels) > 1:
        raise ValueError(f"one table compares with one reference at one level, got {references} at {levels}")
    reference, level = references.pop(), levels.pop()
    rows = [
        [
            d.strategy,
            _n_cell(d),
            f"{d.mean:+.3f}" if d.n >= 1 else "n/a",
            f"[{d.low:+.3f}, {d.high:+.3f}]" if d.n >= 2 else "n/a",
            format_p(d.p) if math.isfinite(d.p) else "n/a",
        ]
        for d in diffs
    ]
    headers = ["strategy", "n", f"mean {metric} difference vs {reference}", f"{100 * level:g} % CI", "p"]
    return markdown_table(headers, rows)


def scores_from_runs(runs: Iterable[tuple[str, int, Mapping[str, float]]], metric: str) -> dict[str, dict[int, float]]:
    """The ``scores`` mapping of :func:`paired_differences` from finished runs' test metrics.

    A comparison's outcome rows (:func:`medtransfer.workflows.outcomes.finished_outcomes`) carry the strategy label,
    the seed and the test metrics in one dict, so ``scores_from_runs(((r["label"], r["seed"], r) for r in rows),
    "auc")`` gives test AUC per strategy and seed. A run lacking ``metric`` gets NaN, which
    :func:`paired_differences` leaves out and lists as missing.

    Args:
        runs: ``(strategy, seed, test metrics)`` per finished run, e.g. the contents of ``test_metrics.json``.
        metric: the metric key, e.g. ``"auc"``, ``"accuracy"``, ``"macro_f1"`` or ``"mean_dice"``.

    Returns:
        ``{strategy: {seed: value}}`` in first-seen order.

    Raises:
        ValueError: two runs share strategy and seed (their scores would overwrite each other), or no run has
            ``metric`` (the message names the metrics the runs have).
    """
    scores: dict[str, dict[int, float]] = {}
    seen: set[str] = set()
    found = False
    for strategy, seed, metrics in runs:
        per_seed = scores.setdefault(strategy, {})
        if seed in per_seed:
            raise ValueError(f"two runs of strategy {strategy!r} with seed {seed}; pass one run per strategy and seed")
        seen.update(k for k, v in metrics.items() if isinstance(v, numbers.Real) and not isinstance(v, bool))
        found = found or metric in metrics
        per_seed[seed] = float(metrics[metric]) if metric in metrics else math.nan
    if scores and not found:
        from medtransfer.workflows.outcomes import METRICS  # here only: the workflows import the training stack

        named = [m for m in METRICS if m in seen] or sorted(seen)
        raise ValueError(f"no run has metric {metric!r}; the runs have: {named}")
    return scores
