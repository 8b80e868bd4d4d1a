"""The two results joined: do MetaLR's learned layer-wise LRs follow layer transferability?

MetaLR's authors explain its gains by transferability: layers that transfer well should need small LRs, the others
large ones. Here both are measured on one fine-tuning run that started from a pre-training with a kept random init:
per layer group, T = D(θr, θFB) / D(θA, θFB) of the fine-tuned weights, and the LR MetaLR chose for that group (its
geometric mean over all iterations and its final value, from the run's ``lr_history.csv``). "The LRs follow T" means
a *negative* rank correlation: the more transferable a layer, the smaller its learned LR.

The rank correlation is Spearman's ρ over the body groups (the re-initialised head has no T), and its p-value is a
permutation test of "the LRs are unrelated to the layer order of T": exact over all n! pairings up to
:data:`EXACT_PERMUTATIONS_UP_TO` groups (ResNet-18's 9 body groups: 362,880), seeded Monte Carlo beyond. Caveat, stated
in every report: T is measured on the weights MetaLR's own LRs produced, and a larger LR moves a layer further from θA,
which lowers its T, so a negative ρ is partly mechanical; the T of a plain fine-tuning run (one LR for all layers)
beside it is the reference that lacks this coupling.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from medtransfer.atomic import write_text_atomic
from medtransfer.report import format_p, markdown_table, save_figure, save_json
from medtransfer.transferability.layerwise import TransferabilityResult

EXACT_PERMUTATIONS_UP_TO = 9
MONTE_CARLO_PERMUTATIONS = 20_000
JOIN_STRATEGIES = ("metalr", "metalr_normalized")


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's ρ with its two-sided permutation p-value (NaN when a side is constant or fewer than 3 values)."""

    rho: float
    p: float
    n: int
    permutations: int
    exact: bool


@dataclass
class JoinedLayer:
    name: str
    label: str
    t: float
    lr_mean: float
    lr_final: float


@dataclass
class JoinResult:
    """One fine-tuning run: T and the learned LR per body group, and their rank correlations."""

    run: str
    strategy: str
    layers: list[JoinedLayer]
    overall_t: float
    head_lr_mean: float
    head_lr_final: float
    mean_lr: RankCorrelation
    final_lr: RankCorrelation
    plain_mean_lr: RankCorrelation | None = None  # ρ of the learned LRs with plain fine-tuning's T, when given
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values).astype(float)


def _pearson_rows(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pearson correlation of the vector ``x`` with every row of ``ys``."""
    xc = x - x.mean()
    yc = ys - ys.mean(axis=-1, keepdims=True)
    return (yc @ xc) / (np.sqrt((yc**2).sum(axis=-1)) * math.sqrt(float((xc**2).sum())))


def spearman_permutation(
    x: Sequence[float], y: Sequence[float], seed: int = 0, exact_up_to: int = EXACT_PERMUTATIONS_UP_TO,
    resamples: int = MONTE_CARLO_PERMUTATIONS,
) -> RankCorrelation:  # fmt: skip
    """Spearman's ρ(x, y) (average ranks for ties) and the two-sided permutation p-value P(|ρ_perm| ≥ |ρ|).

    Exact (every pairing of y with x counted once) for n ≤ ``exact_up_to``; otherwise ``resamples`` seeded random
    pairings with the observed one counted in (p = (k + 1) / (resamples + 1)), so p is never 0.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return RankCorrelation(math.nan, math.nan, n, 0, True)
    rx, ry = _ranks(x), _ranks(y)
    rho = float(_pearson_rows(rx, ry[None, :])[0])
    tolerance = 1e-12
    if n <= exact_up_to:
        perms = np.array(list(itertools.permutations(range(n))), dtype=np.int8)
        rhos = _pearson_rows(rx, ry[perms])
        p = float(np.mean(np.abs(rhos) >= abs(rho) - tolerance))
        return RankCorrelation(rho, p, n, len(perms), True)
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((resamples, n)), axis=1)
    rhos = _pearson_rows(rx, ry[perms])
    p = float((np.sum(np.abs(rhos) >= abs(rho) - tolerance) + 1) / (resamples + 1))
    return RankCorrelation(rho, p, n, resamples, False)


def read_lr_history(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Each layer group's LR at every iteration, from the ``lr_history.csv`` that every bundle run writes."""
    path = Path(run_dir) / "lr_history.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a finished bundle run (LRRecorder writes it)")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise ValueError(f"{path} has no iterations; train the run first")
    header, values = rows[0][1:], np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    return {name: values[:, j] for j, name in enumerate(header)}


def lr_summary(lrs: np.ndarray) -> tuple[float, float]:
    """(geometric mean over iterations, final value) of one group's LRs: the mean is taken on a log scale because
    MetaLR moves LRs multiplicatively, over orders of magnitude. A frozen group (LR 0) gives (0, 0)."""
    lrs = np.asarray(lrs, float)
    if (lrs <= 0).any():
        return 0.0, float(lrs[-1])
    return float(np.exp(np.mean(np.log(lrs)))), float(lrs[-1])


def join(
    transferability: TransferabilityResult, lr_history: Mapping[str, np.ndarray], run: str = "", strategy: str = "",
    seed: int = 0, reference: TransferabilityResult | None = None,
) -> JoinResult:  # fmt: skip
    """Pair each body group's T with its learned LR (matched by group name) and correlate them.

    ``reference`` (plain fine-tuning's T on the same target) is correlated with the learned LRs too: that T was not
    produced by these LRs, so its correlation is free of the mechanical coupling described in the module docstring.
    """
    missing = [la.name for la in transferability.layers if la.name not in lr_history]
    if missing:
        raise ValueError(
            f"lr_history.csv of {run or 'the run'} has no column for layer group(s) {missing}: the run and the "
            "transferability measurement used other layer groups (same --arch and layer_granularity needed)"
        )
    layers, head = [], None
    for la in transferability.layers:
        mean, final = lr_summary(lr_history[la.name])
        if la.is_head:
            head = (mean, final)
            continue
        layers.append(JoinedLayer(la.name, la.label, float(la.t), mean, final))
    t = [la.t for la in layers]

    def correlate(values: list[float], against: list[float] = t) -> RankCorrelation:
        logs = [math.log10(v) if v > 0 else math.nan for v in values]
        return spearman_permutation(against, logs, seed=seed)

    plain = None
    if reference is not None:
        ref = {la.name: la.t for la in reference.layers}
        plain = correlate([la.lr_mean for la in layers], [ref.get(la.name, math.nan) for la in layers])

    return JoinResult(
        run=run,
        strategy=strategy,
        layers=layers,
        overall_t=float(transferability.overall),
        head_lr_mean=head[0] if head else math.nan,
        head_lr_final=head[1] if head else math.nan,
        mean_lr=correlate([la.lr_mean for la in layers]),
        final_lr=correlate([la.lr_final for la in layers]),
        plain_mean_lr=plain,
    )


def verdict(result: JoinResult) -> str:
    """One sentence: do the learned LRs follow T here (ρ < 0 at p < 0.05), run against it, or can one not tell?

    Judged against plain fine-tuning's T when the join has it (free of the coupling of a run's LRs with its own T),
    else against the run's own T, and the sentence says which.
    """
    c = result.plain_mean_lr or result.mean_lr
    basis = "plain fine-tuning's T" if result.plain_mean_lr else "the run's own T, partly mechanical"
    if not math.isfinite(c.rho):
        return f"cannot tell: the learned LRs (or T) are the same for every layer ({basis})"
    if c.p < 0.05:
        side = "follow T (more transferable layers got smaller LRs)" if c.rho < 0 else "run against T"
        return f"{side}: ρ = {c.rho:+.2f}, permutation p = {format_p(c.p)} ({basis})"
    return f"no significant relation: ρ = {c.rho:+.2f}, permutation p = {c.p:.2f} over {c.n} layer groups ({basis})"


def join_table(results: Mapping[str, JoinResult], reference: TransferabilityResult | None = None) -> str:
    """Markdown: one row per layer group with T and log10 LR (mean, final) per strategy, then one line per strategy
    with the correlations. ``reference`` (plain fine-tuning's T) adds its column."""
    items = list(results.items())
    names = [la.name for la in items[0][1].layers]
    headers = ["layer group"]
    if reference is not None:
        headers.append("T plain")
        ref = {la.name: la.t for la in reference.layers}
    for key, _ in items:
        headers += [f"T {key}", f"log10 LR {key} (mean)", f"log10 LR {key} (final)"]
    rows = []
    for i, name in enumerate(names):
        row: list[Any] = [name]
        if reference is not None:
            row.append(ref.get(name, math.nan))
        for _, res in items:
            la = res.layers[i]
            row += [la.t, _log10(la.lr_mean), _log10(la.lr_final)]
        rows.append(row)
    lines = [markdown_table(headers, rows), ""]
    summary = markdown_table(
        ["strategy", "overall T", "ρ(T, mean LR)", "p", "ρ(T, final LR)", "p", "ρ(T plain, mean LR)", "p",
         "head LR (mean)", "verdict"],
        [[key, r.overall_t, r.mean_lr.rho, format_p(r.mean_lr.p), r.final_lr.rho, format_p(r.final_lr.p),
          *((r.plain_mean_lr.rho, format_p(r.plain_mean_lr.p)) if r.plain_mean_lr else ("", "")),
          f"{r.head_lr_mean:.2e}",
          verdict(r)] for key, r in items],
    )  # fmt: skip
    lines += [summary, "", _CAVEAT]
    return "\n".join(lines) + "\n"


_CAVEAT = (
    "ρ < 0 means MetaLR's LRs follow T (more transferable layers, smaller LRs). p: two-sided permutation test over "
    "the body groups. T is measured on the weights MetaLR's own LRs produced (a larger LR moves a layer further from "
    "θA and lowers its T), so a negative ρ is partly mechanical; plain fine-tuning's T, where every layer had one LR, "
    "is the comparison free of that coupling."
)


def _log10(value: float) -> float:
    return math.log10(value) if value > 0 else math.nan


def plot_join(results: Mapping[str, JoinResult], path: str | Path, reference: TransferabilityResult | None = None,
              title: str = "") -> Path:  # fmt: skip
    """Two panels on one layer axis: T per layer group above, the learned LR per group below (log scale; mean as a
    solid line, final as hollow markers), one colour per strategy; plain fine-tuning's T dashed in grey."""
    items = list(results.items())
    labels = [la.label for la in items[0][1].layers]
    x = np.arange(len(labels))
    fig = Figure(figsize=(max(6.5, 0.5 * len(labels) + 2.5), 6.4))
    top, bottom = fig.subplots(2, 1, sharex=True)
    if reference is not None:
        ref = {la.name: la.t for la in reference.layers}
        top.plot(x, [ref.get(la.name, math.nan) for la in items[0][1].layers], color="grey", linestyle="--",
                 marker=".", label=f"plain fine-tuning (overall {reference.overall:.2f})")  # fmt: skip
    for i, (key, res) in enumerate(items):
        colour = f"C{i % 10}"
        top.plot(x, [la.t for la in res.layers], color=colour, marker="o", label=f"{key} ({verdict(res).split(':')[0]})")
        bottom.plot(x, [la.lr_mean for la in res.layers], color=colour, marker="o", label=f"{key}: mean over training")
        bottom.plot(x, [la.lr_final for la in res.layers], color=colour, marker="s", markerfacecolor="none",
                    linestyle=":", label=f"{key}: final")  # fmt: skip
    top.set_ylabel("T = D(θr, θFB) / D(θA, θFB)")
    top.set_title(title or "Layer transferability (top) and MetaLR's learned LR (bottom)")
    top.grid(alpha=0.3)
    top.legend(fontsize=7)
    bottom.set_yscale("log")
    bottom.set_ylabel("learned LR")
    bottom.set_xticks(x, labels, rotation=60, ha="right", fontsize=8)
    bottom.set_xlabel("layer group (input → output; the re-initialised head left out)")
    bottom.grid(alpha=0.3, which="both")
    bottom.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def save_join(results: Mapping[str, JoinResult], out_dir: str | Path, reference: TransferabilityResult | None = None,
              title: str = "", settings: Mapping[str, Any] | None = None) -> str:  # fmt: skip
    """``join.md``, ``join.json`` and ``join.png`` in ``out_dir``; returns the Markdown."""
    out = Path(out_dir)
    text = f"# {title or 'MetaLR learned LRs against layer transferability'}\n\n" + join_table(results, reference)
    payload = {"results": {k: r.to_dict() for k, r in results.items()}, "settings": dict(settings or {})}
    if reference is not None:
        payload["plain_t"] = {la.name: la.t for la in reference.layers}
        payload["plain_overall_t"] = reference.overall
    save_json(payload, out / "join.json")
    plot_join(results, out / "join.png", reference, title)
    write_text_atomic(out / "join.md", text)
    return text


def join_runs(
    pretrain_dir: str | Path, runs: Mapping[str, str | Path], mode: str = "paper",
    reference: TransferabilityResult | None = None,
) -> dict[str, JoinResult]:  # fmt: skip
    """:func:`join` for finished fine-tuning runs of one pre-training, keyed by strategy."""
    from medtransfer.transferability.study import measure_runs

    return {
        key: join(measure_runs(pretrain_dir, run, mode=mode), read_lr_history(run), run=str(run), strategy=key,
                  reference=reference)
        for key, run in runs.items()
    }  # fmt: skip


def run_join(
    bundle: str | Path,
    pretrain_dir: str | Path,
    settings: Mapping[str, Any],
    strategies: Sequence[str] = JOIN_STRATEGIES,
    out_dir: str | Path | None = None,
    plain_run: str | Path | None = None,
    mode: str = "paper",
    finished: Mapping[str, str | Path] | None = None,
) -> str:
    """Fine-tune θA (``pretrain_dir``'s model.pt) on one target with each strategy, then join T and the learned LRs.

    ``settings`` are the bundle overrides of the target (``dataset_format``, ``dataset_dir``, ``run_name``,
    ``runs_dir``, ...); each strategy's run is ``<run_name>_<strategy>`` beside the others, continued when rerun.
    ``plain_run`` (a plain fine-tuning run of the same target) adds its T as the reference without the LR coupling.
    ``finished`` adds runs already trained elsewhere (strategy key -> run dir, e.g. a ``medtransfer compare`` run).
    Writes ``join.md``/``.json``/``.png`` to ``out_dir`` (default ``<runs_dir>/<run_name>_join``).
    """
    from medtransfer.transferability.study import measure_runs, train_and_evaluate

    pretrain_dir = Path(pretrain_dir)
    base = {**settings, "pretrained_ckpt": str(pretrain_dir / "model.pt")}
    runs = {key: Path(run) for key, run in (finished or {}).items()}
    for strategy in strategies:
        key = Path(strategy).stem
        runs[key] = train_and_evaluate(bundle, {**base, "run_name": f"{settings['run_name']}_{key}"}, strategies=[strategy])
    reference = measure_runs(pretrain_dir, plain_run, mode=mode) if plain_run else None
    results = join_runs(pretrain_dir, runs, mode=mode, reference=reference)
    out = Path(out_dir) if out_dir else Path(settings["runs_dir"]) / f"{settings['run_name']}_join"
    title = f"{settings['run_name']}: MetaLR's learned LRs against layer transferability ({mode} T)"
    record = {**base, "strategies": list(strategies), "mode": mode, "plain_run": str(plain_run) if plain_run else None,
              "runs": {key: str(run) for key, run in runs.items()}}  # fmt: skip
    return save_join(results, out, reference, title, record)
