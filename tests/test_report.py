"""Report helpers: files written, images valid, summaries numerically right."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from medtransfer.errors import MedTransferError
from medtransfer.report import (
    DPI_ENV,
    FORMAT_ENV,
    MetricsError,
    MissingMetricsError,
    configure_plots,
    format_summary,
    markdown_table,
    metric_label,
    metric_values,
    plot_confusion_matrix,
    plot_history,
    plot_lr_curves,
    plot_settings,
    save_json,
    series_styles,
    summarize_runs,
)


@pytest.fixture(autouse=True)
def default_plot_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the default plot settings, and what configure_plots puts in the environment is undone
    (an empty variable means "not set"; monkeypatch removes it afterwards)."""
    monkeypatch.setenv(FORMAT_ENV, "")
    monkeypatch.setenv(DPI_ENV, "")


def assert_valid_png(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        im.verify()  # checks chunk CRCs; raises on a truncated/corrupt file
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert w > 100 and h > 100
    return w, h


# ---------------------------------------------------------------- save_json


def test_save_json_round_trips_nan_and_numpy(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "deeper" / "metrics.json"  # parents do not exist yet
    obj = {"auc": float("nan"), "acc": np.float32(0.5), "n": np.int64(3), "cm": np.eye(2, dtype=int), "s": "x"}
    out = save_json(obj, target)
    assert out == target
    text = target.read_text()
    assert "NaN" in text and "\n  " in text  # NaN token, indent 2
    back = json.loads(text)
    assert math.isnan(back["auc"])
    assert back["acc"] == 0.5 and back["n"] == 3 and back["cm"] == [[1, 0], [0, 1]] and back["s"] == "x"
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]  # no temp files left


def test_save_json_failure_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    save_json({"v": 1}, target)
    with pytest.raises(TypeError):
        save_json({"v": object()}, target)  # not serialisable: fails mid-write
    assert json.loads(target.read_text()) == {"v": 1}  # old content intact
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    save_json({"v": 2}, target)  # overwriting works
    assert json.loads(target.read_text()) == {"v": 2}


# ---------------------------------------------------------------- plots


def test_plot_confusion_matrix_png(tmp_path: Path) -> None:
    cm = np.array([[50, 3, 0], [4, 20, 6], [0, 1, 9]])
    out = plot_confusion_matrix(cm, ["normal", "benign", "malignant"], tmp_path / "plots" / "cm.png")
    assert out == tmp_path / "plots" / "cm.png"
    assert_valid_png(out)
    assert plt.get_fignums() == []  # nothing left open in pyplot


def test_plot_confusion_matrix_empty_row_and_bad_shape(tmp_path: Path) -> None:
    # A class with no samples (row sum 0) must not divide by zero.
    assert_valid_png(plot_confusion_matrix([[3, 1], [0, 0]], ["a", "b"], tmp_path / "cm.png"))
    with pytest.raises(ValueError, match="square"):
        plot_confusion_matrix(np.zeros((2, 3)), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="3 class_names"):
        plot_confusion_matrix(np.zeros((2, 2)), ["a", "b", "c"], tmp_path / "x.png")


def test_plot_history_png_with_missing_values(tmp_path: Path) -> None:
    history = [
        {"epoch": 1, "train_loss": 0.9},  # no validation this epoch
        {"epoch": 2, "train_loss": 0.7, "val_auc": 0.71, "val_accuracy": 0.65, "lr": 1e-3},
        {"epoch": 3, "train_loss": 0.6, "val_auc": float("nan"), "val_accuracy": 0.7, "val_note": "x"},
        {"epoch": 4, "train_loss": None, "val_auc": 0.8, "val_accuracy": 0.74},
    ]
    w, h = assert_valid_png(plot_history(history, tmp_path / "history.png", title="run 0"))
    assert w > h  # two panels side by side
    assert plt.get_fignums() == []


def test_plot_history_empty_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        plot_history([], tmp_path / "h.png")
    assert not (tmp_path / "h.png").exists()


def test_pdf_and_svg_plots_are_real_pdf_and_svg_files(tmp_path: Path) -> None:
    configure_plots(formats="pdf")
    out = plot_confusion_matrix([[3, 1], [0, 2]], ["a", "b"], tmp_path / "cm.png")
    assert out == tmp_path / "cm.pdf" and out.read_bytes().startswith(b"%PDF-")
    assert not (tmp_path / "cm.png").exists()  # instead of the PNG, not beside it
    configure_plots(formats=["svg", "png"])  # several formats: one file each, the first is returned
    out = plot_history([{"epoch": 1, "train_loss": 0.5}], tmp_path / "history.png")
    assert out == tmp_path / "history.svg"
    head = out.read_text()[:400]
    assert head.startswith("<?xml") and "<svg" in head
    assert_valid_png(tmp_path / "history.png")
    assert plot_settings().formats == ("svg", "png")
    with pytest.raises(ValueError, match="not supported"):
        configure_plots(formats="jpg")


def test_explicit_suffix_is_kept_when_no_format_is_configured(tmp_path: Path) -> None:
    assert plot_settings().formats is None
    out = plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b"], tmp_path / "cm.svg")
    assert out == tmp_path / "cm.svg" and "<svg" in out.read_text()[:400]


def test_dpi_changes_the_png_pixel_size(tmp_path: Path) -> None:
    history = [{"epoch": 1, "train_loss": 0.9, "val_auc": 0.6}, {"epoch": 2, "train_loss": 0.7, "val_auc": 0.7}]
    configure_plots(dpi=60)
    small = assert_valid_png(plot_history(history, tmp_path / "small.png"))
    configure_plots(dpi=240)
    large = assert_valid_png(plot_history(history, tmp_path / "large.png"))
    assert large[0] == pytest.approx(4 * small[0], rel=0.05) and large[1] == pytest.approx(4 * small[1], rel=0.05)


def test_plot_settings_come_from_the_environment_that_child_processes_inherit(monkeypatch, tmp_path) -> None:
    configure_plots(formats="pdf", dpi=300)
    assert (os.environ[FORMAT_ENV], os.environ[DPI_ENV]) == ("pdf", "300")
    monkeypatch.setenv(FORMAT_ENV, "svg")  # as a bundle run started by `medtransfer --plot-format svg` sees it
    assert plot_settings().formats == ("svg",) and plot_settings().dpi == 300
    monkeypatch.setenv(DPI_ENV, "lots")
    with pytest.raises(MedTransferError, match=DPI_ENV):
        plot_settings()


def test_lr_curve_legend_uses_group_labels_and_marks_equal_curves(tmp_path: Path) -> None:
    configure_plots(formats="svg")  # SVG keeps text as text, so the legend can be read back
    lrs = [[1e-3, 1e-3, 1e-4], [1e-3, 1e-3, 2e-4], [1e-3, 1e-3, 3e-4]]
    out = plot_lr_curves(lrs, ["Conv 1", "Block 1-1", "FC"], tmp_path / "lr_curves.png")
    svg = out.read_text()
    assert ">Conv 1<" in svg and ">FC<" in svg
    assert "Block 1-1 (same as Conv 1)" in svg  # drawn on top of Conv 1, so the legend says so
    assert "learning rate (log scale)" in svg and ">iteration" in svg
    with pytest.raises(ValueError, match="3 groups"):
        plot_lr_curves([[1.0, 2.0]], ["a", "b", "c"], tmp_path / "x.png")


def test_series_styles_tell_every_series_apart() -> None:
    styles = series_styles([[1, 2], [1, 2], [2, 3], [1, float("nan")]], ["a", "b", "c", "d"])
    assert [label for label, _ in styles] == ["a", "b (same as a)", "c", "d"]
    assert len({(st["linestyle"], st["marker"]) for _, st in styles}) == 4


def test_metric_labels_are_readable() -> None:
    assert metric_label("val_macro_f1") == "macro-F1"
    assert metric_label("val_auc") == "AUC"
    assert metric_label("val_dice_liver") == "Dice (liver)"
    assert metric_label("val_mean_dice") == "mean Dice"
    assert metric_label("train_loss") == "training loss"


# ---------------------------------------------------------------- markdown_table


def test_markdown_table_structure_and_formatting() -> None:
    table = markdown_table(["name", "auc", "n"], [["run|a", 0.85314, 12], ["b", float("nan"), 3]])
    lines = table.splitlines()
    assert len(lines) == 2 + 2  # header, separator, 2 rows
    for line in lines:
        # 3 columns -> 4 unescaped pipes per line
        assert line.replace("\\|", "").count("|") == 4
        assert line.startswith("|") and line.endswith("|")
    assert lines[0] == "| name | auc | n |"
    assert set(lines[1].replace("|", "").split()) == {"---"}
    assert "0.853" in lines[2] and "0.85314" not in lines[2]
    assert "| 12 |" in lines[2]
    assert "run\\|a" in lines[2]
    assert "nan" in lines[3]


def test_markdown_table_row_length_mismatch() -> None:
    with pytest.raises(ValueError, match="row 1 has 1 cells"):
        markdown_table(["a", "b"], [[1, 2], [3]])


# ---------------------------------------------------------------- summarize_runs / format_summary


def _make_runs(tmp_path: Path, values: list[tuple[int, float, float, float]]) -> list[Path]:
    dirs = []
    for seed, acc, auc, f1 in values:
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        (d / "test_metrics.json").write_text(
            json.dumps({"seed": seed, "accuracy": acc, "auc": auc, "macro_f1": f1, "n": 100})
        )
        dirs.append(d)
    return dirs


def test_summarize_runs_mean_std_vs_numpy(tmp_path: Path) -> None:
    values = [(0, 0.80, 0.86, 0.78), (1, 0.83, 0.84, 0.80), (2, 0.85, 0.87, 0.81)]
    dirs = _make_runs(tmp_path, values)
    summary = summarize_runs([str(dirs[0]), dirs[1], dirs[2]])
    assert summary["n"] == 3
    assert [r["run"] for r in summary["runs"]] == ["seed0", "seed1", "seed2"]
    assert [r["seed"] for r in summary["runs"]] == [0, 1, 2]
    arr = np.array([v[1:] for v in values])
    for i, key in enumerate(["accuracy", "auc", "macro_f1"]):
        assert summary["mean"][key] == pytest.approx(arr[:, i].mean())
        assert summary["std"][key] == pytest.approx(arr[:, i].std(ddof=1))
    assert "n" not in summary["runs"][0]  # only the selected keys
    json.dumps(summary)  # serialisable

    text = format_summary(summary)
    lines = text.splitlines()
    assert len(lines) == 2 + 3 + 1
    last = lines[-1]
    assert last.startswith("| mean ± std |")
    expected_acc = f"{arr[:, 0].mean():.3f} ± {arr[:, 0].std(ddof=1):.3f}"
    assert expected_acc == "0.827 ± 0.025"  # (0.80+0.83+0.85)/3; sqrt(((.0267)^2+(.0033)^2+(.0233)^2)/2)
    assert expected_acc in last
    assert lines[0] == "| run | seed | accuracy | auc | macro_f1 |"
    assert "| seed1 | 1 | 0.830 | 0.840 | 0.800 |" in lines


def test_summarize_runs_custom_keys_single_run(tmp_path: Path) -> None:
    d = tmp_path / "only"
    d.mkdir()
    (d / "val.json").write_text(json.dumps({"auc": 0.9}))
    summary = summarize_runs([d], metrics_file="val.json", keys=("auc",))
    assert summary["mean"] == {"auc": 0.9} and summary["std"] == {"auc": 0.0}
    assert summary["runs"] == [{"run": "only", "auc": 0.9, "seed": None}]
    assert format_summary(summary).splitlines()[0] == "| run | auc |"  # no seed column without seeds


def test_summarize_runs_missing_file_names_it(tmp_path: Path) -> None:
    dirs = _make_runs(tmp_path, [(0, 0.8, 0.8, 0.8)])
    empty = tmp_path / "seed9"
    empty.mkdir()
    with pytest.raises(MissingMetricsError, match="seed9 has no test_metrics.json") as exc:
        summarize_runs([dirs[0], empty])
    assert "evaluate config" in str(exc.value)
    assert isinstance(exc.value, FileNotFoundError)


def test_summarize_runs_missing_key(tmp_path: Path) -> None:
    d = tmp_path / "r"
    d.mkdir()
    (d / "test_metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    with pytest.raises(ValueError, match="lacks metric"):
        summarize_runs([d])


def segmentation_run(tmp_path: Path, name: str, liver: float, seed: int = 0) -> Path:
    """A run folder whose test_metrics.json is laid out as the LiTS bundle's evaluation writes it (also used by
    test_cli)."""
    d = tmp_path / name
    d.mkdir()
    metrics = {
        "n_cases": 1,
        "mean_dice": liver / 2,
        "dice": {"liver": {"mean": liver, "std": 0.0, "n_cases": 1}, "tumour": {"mean": 0.0, "std": 0.0, "n_cases": 1}},
        "cases": {"volume-1": {"liver": liver, "tumour": 0.0}},
        "split_seed": 0,
        "seed": seed,
        "split": "test",
    }
    (d / "test_metrics.json").write_text(json.dumps(metrics))
    return d


def test_summarize_runs_picks_the_metrics_a_segmentation_run_has(tmp_path: Path) -> None:
    dirs = [segmentation_run(tmp_path, f"s{i}", liver, i) for i, liver in enumerate([0.6, 0.8])]
    assert metric_values(json.loads((dirs[0] / "test_metrics.json").read_text())) == {
        "mean_dice": 0.3,
        "dice.liver": 0.6,
        "dice.tumour": 0.0,
    }
    summary = summarize_runs(dirs, keys=None)
    assert list(summary["mean"]) == ["mean_dice", "dice.liver", "dice.tumour"]
    assert summary["mean"]["dice.liver"] == pytest.approx(0.7)
    assert format_summary(summary).splitlines()[0] == "| run | seed | mean_dice | dice.liver | dice.tumour |"
    assert summarize_runs(dirs, keys=["dice.liver.mean"])["mean"] == {"dice.liver.mean": pytest.approx(0.7)}
    with pytest.raises(MetricsError, match="lacks metric 'accuracy'; available: dice.liver, dice.tumour, mean_dice"):
        summarize_runs(dirs)  # the classification default, asked for explicitly


def test_summarize_runs_without_shared_metrics_says_so(tmp_path: Path) -> None:
    d = tmp_path / "r"
    d.mkdir()
    (d / "test_metrics.json").write_text(json.dumps({"split": "test", "seed": 1}))
    with pytest.raises(MetricsError, match="share no numeric metric"):
        summarize_runs([d], keys=None)


def test_p_values_keep_their_size_below_a_thousandth():
    import math

    from medtransfer.report import format_p

    assert format_p(2 / math.factorial(9)) == "5.5e-06"  # ρ = ±1 over 9 groups, exact: not "0.000"
    assert format_p(0.0481) == "0.048" and format_p(1.0) == "1.000"
    assert format_p(None) == "" and format_p(float("nan")) == "nan"
