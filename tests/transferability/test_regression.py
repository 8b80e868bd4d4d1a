"""log T ~ a zG + b zD + c z(log N) + d across datasets."""

from __future__ import annotations

import numpy as np
import pytest

from medtransfer.transferability.regression import (
    fit_transferability_regression,
    format_regression,
    plot_partial_effects,
)


def _rows(n: int = 8, noise: float = 0.0, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    g, d = rng.uniform(0.1, 1.5, n), rng.uniform(0.2, 0.9, n)
    size = rng.integers(100, 50000, n).astype(float)

    def z(v: np.ndarray) -> np.ndarray:
        return (v - v.mean()) / v.std(ddof=1)  # the fit standardises with the sample std

    log_t = 0.5 * z(g) - 0.3 * z(d) + 0.2 * z(np.log(size)) + 1.0 + noise * rng.normal(size=n)
    return [
        {"dataset": f"ds{i}", "T": float(np.exp(log_t[i])), "G": float(g[i]), "D": float(d[i]), "N": int(size[i])}
        for i in range(n)
    ]


def test_recovers_known_coefficients_from_noiseless_rows():
    rows = _rows()
    fit = fit_transferability_regression(rows)
    coef = fit["coefficients"]
    assert coef["a"] == pytest.approx(0.5, abs=1e-9)
    assert coef["b"] == pytest.approx(-0.3, abs=1e-9)
    assert coef["c"] == pytest.approx(0.2, abs=1e-9)
    assert coef["d"] == pytest.approx(1.0, abs=1e-9)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12)
    assert fit["n"] == 8
    assert fit["datasets"] == [r["dataset"] for r in rows]
    np.testing.assert_allclose(fit["residuals"], 0.0, atol=1e-9)
    g = np.array([r["G"] for r in rows])
    assert fit["standardization"]["G"] == pytest.approx({"mean": g.mean(), "std": g.std(ddof=1)})
    log_n = np.log([r["N"] for r in rows])
    assert fit["standardization"]["logN"]["mean"] == pytest.approx(log_n.mean())


def test_noisy_rows_give_r2_below_one():
    fit = fit_transferability_regression(_rows(n=12, noise=0.3, seed=1))
    assert 0.0 < fit["r2"] < 0.999
    assert fit["adj_r2"] < fit["r2"]
    assert all(v > 0 for v in fit["stderr"].values())
    # residuals are log T - fitted and sum to zero with an intercept
    np.testing.assert_allclose(np.array(fit["log_T"]) - fit["fitted"], fit["residuals"])
    assert sum(fit["residuals"]) == pytest.approx(0.0, abs=1e-9)


def test_too_few_rows_raise():
    with pytest.raises(ValueError, match="at least 5"):
        fit_transferability_regression(_rows(n=4))
    assert fit_transferability_regression(_rows(n=5))["n"] == 5


def test_bad_rows_raise():
    rows = _rows()
    rows[2] = {**rows[2], "T": 0.0}
    with pytest.raises(ValueError, match="ds2"):
        fit_transferability_regression(rows)
    rows = [{**r, "D": 0.5} for r in _rows()]
    with pytest.raises(ValueError, match="D .diversity. is the same"):
        fit_transferability_regression(rows)
    rows = _rows()
    del rows[0]["N"]
    with pytest.raises(KeyError, match="N"):
        fit_transferability_regression(rows)


def test_partial_effects_png_and_markdown(tmp_path):
    rows = _rows(n=7, noise=0.1, seed=2)
    fit = fit_transferability_regression(rows)
    path = plot_partial_effects(fit, rows, tmp_path / "plots" / "partial.png")
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = format_regression(fit)
    assert "| a |" in text and "| d |" in text and "domain gap" in text
    assert f"{fit['coefficients']['a']:.3f}" in text
    assert "n = 7" in text and "R²" in text


def test_residual_degrees_of_freedom_and_coefficient_p_values():
    rows = _rows(n=12, noise=0.05, seed=3)
    fit = fit_transferability_regression(rows)
    assert fit["residual_dof"] == 12 - 4
    # the t-test by hand: p = 2·P(T_dof > |b / se|), with the t distribution's survival function from its CDF
    from scipy.stats import t as student_t

    for name, b in fit["coefficients"].items():
        expected = 2 * (1 - student_t.cdf(abs(b / fit["stderr"][name]), 8))
        assert fit["p"][name] == pytest.approx(expected, abs=1e-9)
    assert fit["p"]["a"] < 0.001  # a true effect of 0.5 against noise 0.05
    assert "8 residual degrees of freedom" in format_regression(fit)
    assert fit_transferability_regression(_rows(n=5))["residual_dof"] == 1
