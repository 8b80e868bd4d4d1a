"""Every strategy fragment merges onto every shipped bundle and trains; every bundle keeps the fragments' contract."""

from __future__ import annotations

import json

import pytest
from monai.bundle import ConfigParser

from medtransfer.bundling import bundle_names, bundle_path, strategy_names, strategy_path
from medtransfer.errors import StrategyError
from medtransfer.launch import project_error
from medtransfer.runs import run_bundle_workflow

# the ids configs/strategies/README.md promises a fragment can read
CONTRACT = ("network", "layer_groups", "optimizer", "lr", "epochs", "batch_size", "seed", "device", "amp",
            "output_dir", "meta_dataset", "train#trainer", "train#handlers", "checkpoint_objects", "run_settings",
            "lr_scheduler", "strategy", "train#dataset", "loss", "weight_decay", "pretrained_ckpt", "layer_granularity",
            "meta_source", "meta_fraction", "meta_datalist", "fit_split", "max_train")  # fmt: skip
# the ids a fragment may set at the top level, besides its own name-prefixed ones
MAY_SET = {"strategy", "finetune", "weight_decay", "lr_scheduler", "+imports", "+train#handlers", "+checkpoint_objects",
           "+run_settings", "meta_source", "meta_fraction", "optimizer#_target_", "lr"}  # fmt: skip
# fragments that need a classification head (one feature vector per image)
CLASSIFICATION_ONLY = {"linear_probe_fast"}
# small, fast runs of each bundle: one iteration of training and of validation
TINY = {
    "busi_classification": {"image_size": 32},
    "chestxray_classification": {"image_size": 32},
    "natural_transferability": {"image_size": 32},
    "pocus_classification": {"image_size": 32, "num_folds": 3},
    "lits_segmentation": {"spatial_dims": 2, "channels": [8, 16, 32], "num_res_units": 1, "slice_size": [48, 48],
                          "samples_per_volume": 2, "spacing": [3.0, 3.0, 3.0]},  # fmt: skip
}


@pytest.mark.parametrize("bundle", bundle_names())
def test_bundle_provides_the_fragment_contract(bundle):
    parser = ConfigParser()
    parser.read_config(bundle_path(bundle) / "configs" / "train.json")
    missing = [i for i in CONTRACT if i not in parser]
    assert not missing, f"{bundle} lacks {missing} (configs/strategies/README.md)"
    targets = [h["_target_"] for h in parser["train#handlers"]]  # inline dicts: MONAI's property check reads them
    assert "medtransfer.handlers.LRRecorder" in targets


@pytest.mark.parametrize("fragment", strategy_names())
@pytest.mark.parametrize("bundle", bundle_names())
def test_merged_config_keeps_monai_bundle_properties(bundle, fragment, tmp_path):
    from monai.bundle import ConfigWorkflow

    configs = bundle_path(bundle) / "configs"
    files = [str(configs / "train.json"), str(strategy_path(fragment))]
    workflow = ConfigWorkflow(
        config_file=files, meta_file=str(configs / "metadata.json"), workflow_type="train", runs_dir=str(tmp_path)
    )
    if fragment in CLASSIFICATION_ONLY and bundle == "lits_segmentation":
        with pytest.raises(RuntimeError) as refused:
            workflow.initialize()
            workflow.check_properties()
        assert isinstance(project_error(refused.value), StrategyError)
        return
    workflow.initialize()
    assert workflow.check_properties() == []


@pytest.mark.parametrize("fragment", strategy_names())
def test_fragment_sets_only_what_the_contract_allows(fragment):
    keys = set(json.loads(strategy_path(fragment).read_text()))
    # a variant (metalr_normalized) may use the ids of the strategy it varies (metalr_*)
    families = [name for name in strategy_names() if fragment == name or fragment.startswith(f"{name}_")]
    foreign = {k for k in keys - MAY_SET if not any(k.startswith(f"{f}_") or k == f for f in families)}
    assert not foreign, f"{fragment}.json sets {sorted(foreign)}: prefix them with '{fragment}_' or extend the contract"
    assert "train#trainer#iteration_update" not in keys


def test_every_bundle_has_a_tiny_setting():
    assert set(TINY) == set(bundle_names())


@pytest.mark.slow
@pytest.mark.parametrize("fragment", strategy_names())
@pytest.mark.parametrize("bundle", bundle_names())
def test_fragment_merges_onto_bundle_and_trains_one_iteration(bundle, fragment, tmp_path):
    configs = bundle_path(bundle) / "configs"
    if fragment in CLASSIFICATION_ONLY and bundle == "lits_segmentation":
        with pytest.raises(RuntimeError) as refused:
            run_bundle_workflow([configs / "train.json", strategy_path(fragment)], {**TINY[bundle], "epochs": 1,
                                "runs_dir": str(tmp_path), "run_name": "one"})  # fmt: skip
        assert "use the linear_probe strategy" in str(project_error(refused.value))
        return
    overrides = {
        **TINY[bundle], "epochs": 1, "batch_size": 2, "runs_dir": str(tmp_path), "run_name": "one",
        "train#trainer#epoch_length": 1, "validate#evaluator#epoch_length": 1,
        "validate#dataloader#batch_size": 64,  # one validation batch holding every class: a finite AUC, so a model.pt
    }  # fmt: skip
    if fragment == "t_informed":
        overrides["t_informed_probe_iterations"] = 1  # the probe's "epoch" as short as the trainer's
    workflow = run_bundle_workflow([configs / "train.json", strategy_path(fragment)], overrides)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 1
    info = json.loads((tmp_path / "one" / "run_info.json").read_text())
    assert info["settings"]["strategy"] == json.loads(strategy_path(fragment).read_text())["strategy"]
    assert (tmp_path / "one" / "checkpoint_epoch=1.pt").is_file()
