"""log T ~ a zG + b zD + c z(log N) + d across target datasets (Chen et al. 2022, "Rethinking Two Consensuses").

Predictors are standardised (z-scores over the datasets in the fit) so the coefficients are comparable: each is the
change of log T per standard deviation of its predictor across the datasets studied, and d is log T of a dataset that
is average in all three. Size enters as log N because its effect on transferability is multiplicative.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from medtransfer.report import format_p, markdown_table, save_figure

__all__ = ["MIN_ROWS", "PREDICTORS", "fit_transferability_regression", "format_regression", "plot_partial_effects"]

# (coefficient, predictor key, description)
PREDICTORS = (("a", "G", "domain gap"), ("b", "D", "diversity"), ("c", "logN", "log dataset size"))
_INTERCEPT = ("d", "intercept")
_N_PARAMS = len(PREDICTORS) + 1
# One row per parameter interpolates the data exactly (R^2 = 1 whatever the truth), so a fit needs one spare row;
# with exactly 4 datasets we raise rather than report a meaningless R^2 = 1.
MIN_ROWS = _N_PARAMS + 1


def _raw_columns(rows: Sequence[Mapping]) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Dataset names, log T, and the raw predictors (G, D, log N), validated."""
    names: list[str] = []
    log_t: list[float] = []
    cols: dict[str, list[float]] = {"G": [], "D": [], "logN": []}
    for i, row in enumerate(rows):
        missing = [k for k in ("dataset", "T", "G", "D", "N") if k not in row]
        if missing:
            raise KeyError(
                f"row {i} ({row.get('dataset', '?')}) lacks key(s) {missing}; each row needs dataset, T, G, D, N"
            )
        name = str(row["dataset"])
        values = {k: float(row[k]) for k in ("T", "G", "D", "N")}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"row {i} ({name}): {bad} not finite ({values}); drop the dataset or recompute it")
        if values["T"] <= 0 or values["N"] <= 0:
            raise ValueError(
                f"row {i} ({name}): T and N must be > 0 to take logs, got T={values['T']}, N={values['N']}"
            )
        names.append(name)
        log_t.append(math.log(values["T"]))
        cols["G"].append(values["G"])
        cols["D"].append(values["D"])
        cols["logN"].append(math.log(values["N"]))
    return names, np.asarray(log_t), {k: np.asarray(v) for k, v in cols.items()}


def _standardized(cols: Mapping[str, np.ndarray], standardization: Mapping[str, Mapping[str, float]]) -> np.ndarray:
    """(n, 3) matrix of z-scores in PREDICTORS order."""
    return np.column_stack(
        [(cols[key] - standardization[key]["mean"]) / standardization[key]["std"] for _, key, _ in PREDICTORS]
    )


def fit_transferability_regression(rows: Sequence[Mapping]) -> dict:
    """Ordinary least squares of log T on standardised G, D and log N; one row (dict) per target dataset.

    Each row needs ``dataset``, ``T`` (mean layer-wise transferability, > 0), ``G``, ``D`` and ``N`` (training-set
    size). Returns a JSON-serialisable dict: ``coefficients`` {a, b, c, d}, ``stderr`` (OLS standard errors),
    ``terms`` (what each coefficient multiplies), ``standardization`` (mean and sample std of G, D, logN, to apply
    the fit to new datasets), ``r2``, ``adj_r2``, ``datasets``, ``fitted`` and ``residuals`` (of log T), ``n``.

    Raises when there are fewer than ``MIN_ROWS`` (5) datasets: four parameters fit four points exactly.
    """
    rows = list(rows)
    if len(rows) < MIN_ROWS:
        raise ValueError(
            f"fit_transferability_regression got {len(rows)} dataset(s) but needs at least {MIN_ROWS}: the model has "
            f"{_N_PARAMS} parameters (a, b, c, d), so {_N_PARAMS} datasets are fitted exactly (R^2 = 1 regardless of "
            "the data) and fewer are underdetermined; add more target datasets"
        )
    names, y, cols = _raw_columns(rows)
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"datasets {dupes} appear more than once; give each row a unique 'dataset' name")
    standardization: dict[str, dict[str, float]] = {}
    for _, key, label in PREDICTORS:
        std = float(cols[key].std(ddof=1))
        if not std > 1e-12 * max(1.0, float(np.abs(cols[key]).max())):
            raise ValueError(
                f"{key} ({label}) is the same for every dataset, so its coefficient cannot be estimated; "
                "include datasets that differ in it"
            )
        standardization[key] = {"mean": float(cols[key].mean()), "std": std}
    z = _standardized(cols, standardization)
    x = np.column_stack([z, np.ones(len(y))])
    beta, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    if rank < _N_PARAMS:
        raise ValueError(
            "the standardised predictors are collinear (e.g. G and D move together across these datasets), so the "
            "coefficients are not identifiable; add datasets that vary them independently"
        )
    fitted = x @ beta
    residuals = y - fitted
    n = len(y)
    ss_res = float(residuals @ residuals)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    dof = n - _N_PARAMS
    adj_r2 = 1.0 - (1.0 - r2) * (n - 1) / dof if dof > 0 and ss_tot > 0 else float("nan")
    cov = ss_res / dof * np.linalg.inv(x.T @ x)
    coef_names = [c for c, _, _ in PREDICTORS] + [_INTERCEPT[0]]
    stderr = [math.sqrt(max(cov[i, i], 0.0)) for i in range(len(coef_names))]
    return {
        "n": n,
        "residual_dof": dof,
        "coefficients": {c: float(b) for c, b in zip(coef_names, beta, strict=True)},
        "stderr": {c: float(e) for c, e in zip(coef_names, stderr, strict=True)},
        # two-sided t-test of each coefficient against 0 on the residual degrees of freedom
        "p": {c: _t_test_p(float(b), e, dof) for c, b, e in zip(coef_names, beta, stderr, strict=True)},
        "terms": {**{c: f"z({key}) — {label}" for c, key, label in PREDICTORS}, _INTERCEPT[0]: _INTERCEPT[1]},
        "standardization": standardization,
        "r2": r2,
        "adj_r2": adj_r2,
        "datasets": names,
        "log_T": y.tolist(),
        "fitted": fitted.tolist(),
        "residuals": residuals.tolist(),
    }


def plot_partial_effects(fit: Mapping, rows: Sequence[Mapping], path: Path | str) -> Path:
    """One panel per predictor: partial residual (log T minus the *other* predictors' fitted contribution) against
    the standardised predictor, with the fitted line d + coef * z and dataset names next to the points.

    Partial residuals show each predictor's effect with the others held fixed, which a raw scatter of log T
    against G would confound (e.g. if the large datasets also happen to be the distant ones).
    """
    names, y, cols = _raw_columns(rows)
    coef = fit["coefficients"]
    z = _standardized(cols, fit["standardization"])
    letters = [c for c, _, _ in PREDICTORS]
    fig = Figure(figsize=(4.2 * len(PREDICTORS), 4.0))
    axes = fig.subplots(1, len(PREDICTORS), squeeze=False)[0]
    for j, (ax, (letter, key, label)) in enumerate(zip(axes, PREDICTORS, strict=True)):
        others = sum(coef[letters[k]] * z[:, k] for k in range(len(PREDICTORS)) if k != j)
        partial = y - others
        ax.scatter(z[:, j], partial, color="tab:blue", zorder=3)
        for name, zx, py in zip(names, z[:, j], partial, strict=True):
            ax.annotate(name, (zx, py), textcoords="offset points", xytext=(4, 4), fontsize=8)
        lo, hi = float(z[:, j].min()), float(z[:, j].max())
        pad = 0.1 * (hi - lo) if hi > lo else 0.5
        line = np.linspace(lo - pad, hi + pad, 50)
        fitted = f"fitted slope {letter} = {coef[letter]:+.3f}"
        ax.plot(line, coef["d"] + coef[letter] * line, color="tab:red", label=fitted)
        ax.set_xlabel(f"z({key}): {label} (standard deviations from the mean)")
        ax.set_ylabel("partial residual of log T (natural log)" if j == 0 else "")
        ax.set_title(f"partial effect of {key}")
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    r2 = fit.get("r2", float("nan"))
    fig.suptitle(f"log T = a·zG + b·zD + c·z(log N) + d   (n = {fit.get('n', len(names))}, R² = {r2:.3f})")
    fig.tight_layout()
    return save_figure(fig, path)


def _t_test_p(estimate: float, stderr: float, dof: int) -> float:
    from scipy.stats import t

    if dof <= 0 or not stderr > 0:
        return float("nan")
    return float(2 * t.sf(abs(estimate / stderr), dof))


def format_regression(fit: Mapping) -> str:
    """Markdown: coefficient, standard error, p (t-test on the residual degrees of freedom) and term, then n, the
    residual degrees of freedom, R² and adjusted R²."""
    p = fit.get("p", {})
    rows = [[c, fit["coefficients"][c], fit["stderr"][c], format_p(p.get(c, float("nan"))), fit["terms"][c]]
            for c in fit["coefficients"]]  # fmt: skip
    table = markdown_table(["coefficient", "estimate", "std. error", "p", "term"], rows)
    dof = fit.get("residual_dof", fit["n"] - len(fit["coefficients"]))
    return (f"{table}\n\nn = {fit['n']} datasets, {dof} residual degrees of freedom, R² = {fit['r2']:.3f}, "
            f"adjusted R² = {fit['adj_r2']:.3f}")
