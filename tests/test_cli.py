"""The `medtransfer` command: thin wrappers, checked through their output."""

import argparse
import json
import logging
import os

import pytest
from conftest import REPO, STRATEGIES
from test_report import segmentation_run

from medtransfer.cli import PLOT_FORMATS, build_parser, main
from medtransfer.data import read_busi
from medtransfer.report import DPI_ENV, FORMAT_ENV
from medtransfer.report import PLOT_FORMATS as WRITTEN_FORMATS


@pytest.fixture(autouse=True)
def default_plot_settings(monkeypatch):
    """`--plot-format`/`--dpi` write the environment (for child runs); monkeypatch removes what a test left there."""
    monkeypatch.setenv(FORMAT_ENV, "")
    monkeypatch.setenv(DPI_ENV, "")


def test_layers_prints_the_ten_resnet18_groups(capsys):
    assert main(["layers", "--arch", "resnet18"]) == 0
    out = capsys.readouterr().out
    for name in ("conv1+bn1", "layer1.0", "layer4.1", "fc"):
        assert name in out
    assert main(["layers", "--arch", "resnet18", "--granularity", "stage"]) == 0
    assert "layer1.0" not in capsys.readouterr().out


def test_demo_data_is_readable_busi(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "demo"), "--n-per-class", "4", "--image-size", "48"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert len(read_busi(tmp_path / "demo", require_masks=True)) == 12


def test_demo_data_other_tasks_are_readable(tmp_path):
    from medtransfer.data import read_lits
    from medtransfer.data.pocus import read_pocus_clips

    assert main(["demo-data", str(tmp_path / "lits"), "--task", "lits"]) == 0
    assert len(read_lits(tmp_path / "lits")) == 6
    assert main(["demo-data", str(tmp_path / "pocus"), "--task", "pocus"]) == 0
    assert {c["class_name"] for c in read_pocus_clips(tmp_path / "pocus")} == {"covid19", "pneumonia", "regular"}


def test_summarize_gives_mean_and_std_over_seeds(tmp_path, capsys):
    for seed, acc in enumerate([0.8, 0.9, 1.0]):
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        (run / "test_metrics.json").write_text(json.dumps({"accuracy": acc, "auc": 0.5, "macro_f1": acc, "seed": seed}))
    assert main(["summarize", *(str(tmp_path / f"seed{s}") for s in range(3)), "--out", str(tmp_path / "t")]) == 0
    assert "0.900 ± 0.100" in capsys.readouterr().out
    assert json.loads((tmp_path / "t.json").read_text())["mean"]["accuracy"] == pytest.approx(0.9)


def test_errors_are_reported_without_traceback(tmp_path, capsys):
    assert main(["summarize", str(tmp_path / "missing")]) == 2
    assert "test_metrics.json" in capsys.readouterr().err


def test_data_errors_inside_a_bundle_run_reach_the_user_plainly(tmp_path, capsys):
    argv = ["transfer", "pretrain", "--dataset", "cifar100", "--root", str(tmp_path / "none"), "--name", "x"]
    assert main([*argv, "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cifar100 not found under") and "cifar-100-python" in err and "Traceback" not in err


def test_layers_takes_the_architecture_positionally_or_as_option(capsys):
    assert main(["layers", "resnet18"]) == 0
    positional = capsys.readouterr().out
    assert "layer1.0" in positional
    assert main(["layers", "--arch", "resnet18"]) == 0
    assert capsys.readouterr().out == positional
    with pytest.raises(SystemExit, match="unknown architecture 'resnet99'; choose one of resnet18.*, unet"):
        main(["layers", "resnet99"])
    with pytest.raises(SystemExit, match="disagree"):
        main(["layers", "resnet18", "--arch", "densenet121"])


def test_layers_of_a_monai_unet(capsys):
    assert main(["layers", "--arch", "unet"]) == 0  # a 2D residual U-Net by default
    out = capsys.readouterr().out
    for name in ("down1", "Down-16", "Bottom-256", "up4", "out"):
        assert name in out
    assert main(["layers", "unet", "--spatial-dims", "3", "--granularity", "stage"]) == 0
    out = capsys.readouterr().out
    assert "Encoder" in out and "Decoder" in out and "down1" not in out


def _my_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    mine = ("layers", "demo-data", "summarize", "cv", "pocus-frames", "data-root")
    return {"medtransfer": parser, **{name: sub.choices[name] for name in mine}}


def test_every_option_has_a_help_text_and_shows_its_default(capsys):
    for name, parser in _my_parsers().items():
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
            if action.option_strings and not (
                action.default is None or action.default is False or action.default == []
            ):
                assert f"(default: {action.default})" in " ".join(text.split()), (name, action.option_strings)
    with pytest.raises(SystemExit):
        main(["layers", "--help"])
    assert "(default: resnet18)" in capsys.readouterr().out


def test_plot_options_go_before_the_command_and_reach_child_runs_through_the_environment(capsys):
    assert main(["--plot-format", "pdf", "--plot-format", "svg", "--dpi", "300", "data-root"]) == 0
    assert (os.environ[FORMAT_ENV], os.environ[DPI_ENV]) == ("pdf,svg", "300")
    with pytest.raises(SystemExit):
        main(["--dpi", "3", "data-root"])
    assert "dpi must lie in 10..2400" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--plot-format", "jpg", "data-root"])
    assert PLOT_FORMATS == WRITTEN_FORMATS  # the CLI's copy of the list


def test_summarize_a_segmentation_run_tables_its_dice_keys(tmp_path, capsys):
    runs = [str(segmentation_run(tmp_path, f"s{i}", liver)) for i, liver in enumerate([0.6, 0.8])]
    assert main(["summarize", *runs]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "| run | seed | mean_dice | dice.liver | dice.tumour |"
    assert "0.700 ± 0.141" in out
    assert main(["summarize", *runs, "--keys", "accuracy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "lacks metric 'accuracy'; available: dice.liver" in err
    assert len(err.strip().splitlines()) == 1


def test_cv_says_each_bundle_start_up_warning_once(tmp_path):
    """Every fold is a train and an evaluate workflow; MONAI's workflow warns the same at each start."""
    from monai.bundle import ConfigWorkflow

    from medtransfer.cv import once_per_message

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    workflow_logger = logging.getLogger("monai.bundle.workflows")
    workflow_logger.addHandler(handler)
    configs = [REPO / "bundles" / "busi_classification" / "configs" / "train.json", STRATEGIES / "metalr.json"]
    try:
        with once_per_message():
            for _ in range(3):
                ConfigWorkflow(config_file=[str(c) for c in configs], logging_file=False)
    finally:
        workflow_logger.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert len(messages) == len(set(messages)) >= 2  # "Logging file is set to False", "Not all config files are in"
    assert any("Not all config files" in m for m in messages) and any("Logging file" in m for m in messages)
