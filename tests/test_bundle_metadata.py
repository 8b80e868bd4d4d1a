"""Every shipped bundle's ``configs/metadata.json`` follows MONAI's current bundle metadata schema.

The schema is ``meta_schema_20240725.json`` of the MONAI-extra-test-data 0.8.1 release (``SCHEMA_URL``), the one the
MONAI model zoo validates bundles against (``ci/verify_bundle.py``: ``monai.bundle.verify_metadata``). Its text is
mirrored verbatim in Project-MONAI/project-monai.github.io as ``public/schema/meta_schema_20240725.json``. The
required fields and types below are copied from it; nothing is fetched here. For a full ``jsonschema`` validation,
point ``MONAI_META_SCHEMA`` at a local copy of the schema file (the test is skipped without one, or without
``jsonschema``). The same check by hand::

    python -m monai.bundle verify_metadata --meta_file bundles/busi_classification/configs/metadata.json \\
        --filepath path/to/meta_schema_20240725.json
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import medtransfer

SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
SCHEMA_ENV = "MONAI_META_SCHEMA"

# meta_schema_20240725.json, top level: "required" and the type of each of those properties
REQUIRED = {
    "schema": str,
    "version": str,
    "monai_version": str,
    "pytorch_version": str,
    "numpy_version": str,
    "required_packages_version": dict,
    "task": str,
    "description": str,
    "authors": str,
    "copyright": str,
    "network_data_format": dict,
}
# its optional top-level properties, each with the type it must have when present
OPTIONAL = {
    "changelog": dict,
    "data_source": str,
    "data_type": str,
    "image_classes": str,
    "label_classes": str,
    "pred_classes": str,
    "eval_metrics": dict,
    "intended_use": str,
    "references": list,
    "supported_apps": dict,
}
# $defs/network_io requires inputs and outputs; post_processed_outputs is optional; all three map names to arguments
NETWORK_IO_REQUIRED = ("inputs", "outputs")
NETWORK_IO_OPTIONAL = ("post_processed_outputs",)
# another network's format may be described under "<network-name>_data_format" ("patternProperties")
DATA_FORMAT_KEY = re.compile(r"^[_a-zA-Z0-9]+_data_format$")
# $defs/tensor: required keys and their JSON types, then the optional ones
TENSOR_REQUIRED = {
    "type": str,
    "format": str,
    "num_channels": int,
    "spatial_shape": list,
    "dtype": str,
    "value_range": list,
}
TENSOR_OPTIONAL = {"is_patch_data": bool, "channel_def": dict}

# this project asks more of its bundles than the schema does: the descriptive fields and fully described tensors
PROJECT_FIELDS = (
    "changelog",
    "intended_use",
    "data_source",
    "data_type",
    "image_classes",
    "label_classes",
    "pred_classes",
    "references",
)
INPUT_KEYS = (*TENSOR_REQUIRED, "modality", *TENSOR_OPTIONAL)
OUTPUT_KEYS = (*TENSOR_REQUIRED, *TENSOR_OPTIONAL)

BUNDLES_DIR = Path(medtransfer.__file__).resolve().parent / "bundles"
BUNDLES = sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / "configs" / "train.json").is_file())


def _metadata(name: str) -> dict:
    return json.loads((BUNDLES_DIR / name / "configs" / "metadata.json").read_text())


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _has_type(value, kind: type) -> bool:
    return _is_int(value) if kind is int else isinstance(value, kind)


def _check_tensor(where: str, tensor: dict) -> None:
    for key, kind in TENSOR_REQUIRED.items():
        assert key in tensor, f"{where}: missing required {key!r}"
        assert _has_type(tensor[key], kind), f"{where}.{key} must be {kind.__name__}, got {tensor[key]!r}"
    for key, kind in TENSOR_OPTIONAL.items():
        if key in tensor:
            assert _has_type(tensor[key], kind), f"{where}.{key} must be {kind.__name__}, got {tensor[key]!r}"
    assert all(isinstance(d, str) or _is_int(d) for d in tensor["spatial_shape"]), f"{where}.spatial_shape"
    assert all(_is_number(v) for v in tensor["value_range"]), f"{where}.value_range must hold numbers"
    # the specification's form: "[MIN, MAX]", or "[]" when not known
    assert len(tensor["value_range"]) in (0, 2), f"{where}.value_range must be [] or [MIN, MAX]"
    if tensor["value_range"]:
        assert tensor["value_range"][0] <= tensor["value_range"][1], f"{where}.value_range is reversed"


def _check_argument(where: str, value) -> None:
    # $defs/argument: a number, a string, a boolean, or a tensor description
    if isinstance(value, dict):
        _check_tensor(where, value)
    else:
        assert isinstance(value, int | float | str | bool), f"{where} must be a number, string, bool or tensor"


def _check_network_io(where: str, io: dict) -> None:
    assert isinstance(io, dict), f"{where} must be an object"
    for key in NETWORK_IO_REQUIRED:
        assert key in io, f"{where}: missing required {key!r}"
    for key in (*NETWORK_IO_REQUIRED, *NETWORK_IO_OPTIONAL):
        if key in io:
            assert isinstance(io[key], dict), f"{where}.{key} must be an object"
            for name, value in io[key].items():
                _check_argument(f"{where}.{key}.{name}", value)


def test_the_five_bundles_ship():
    assert set(BUNDLES) >= {
        "busi_classification",
        "chestxray_classification",
        "pocus_classification",
        "lits_segmentation",
        "natural_transferability",
    }


@pytest.mark.parametrize("name", BUNDLES)
def test_required_fields_of_the_schema_are_present_with_their_types(name):
    meta = _metadata(name)
    assert meta["schema"] == SCHEMA_URL
    for key, kind in REQUIRED.items():
        assert key in meta, f"{name}: missing required {key!r}"
        assert isinstance(meta[key], kind), f"{name}: {key} must be {kind.__name__}"
    for key, kind in OPTIONAL.items():
        if key in meta:
            assert isinstance(meta[key], kind), f"{name}: {key} must be {kind.__name__}"
    assert all(isinstance(r, str) for r in meta.get("references", [])), f"{name}: references must be strings"
    _check_network_io(f"{name}.network_data_format", meta["network_data_format"])
    for key, value in meta.items():
        if DATA_FORMAT_KEY.match(key):
            _check_network_io(f"{name}.{key}", value)


@pytest.mark.parametrize("name", BUNDLES)
def test_metadata_describes_the_bundle_fully(name):
    meta = _metadata(name)
    for key in PROJECT_FIELDS:
        assert meta.get(key), f"{name}: {key!r} is missing or empty"
    assert meta["version"] in meta["changelog"], f"{name}: version {meta['version']} has no changelog entry"
    io = meta["network_data_format"]
    assert "image" in io["inputs"] and "pred" in io["outputs"], f"{name}: inputs.image and outputs.pred expected"
    formats = [("inputs", "image", INPUT_KEYS), ("outputs", "pred", OUTPUT_KEYS)]
    formats += [("post_processed_outputs", k, OUTPUT_KEYS) for k in io.get("post_processed_outputs", {})]
    for part, key, keys in formats:
        tensor = io[part][key]
        missing = [k for k in keys if k not in tensor]
        assert not missing, f"{name}: {part}.{key} lacks {missing}"
        channel_def = tensor["channel_def"]
        assert sorted(channel_def, key=int) == [str(i) for i in range(tensor["num_channels"])], (
            f"{name}: {part}.{key}.channel_def must name channels 0..{tensor['num_channels'] - 1}"
        )


@pytest.mark.parametrize("name", BUNDLES)
def test_network_matches_the_described_inputs_and_outputs(name):
    """``monai.bundle.verify_net_in_out``, as the model zoo runs it: channels, spatial shape and dtypes."""
    from monai.bundle import verify_net_in_out

    configs = BUNDLES_DIR / name / "configs"
    meta = _metadata(name)
    overrides = {}
    train = json.loads((configs / "train.json").read_text())
    if str(train.get("num_classes", "")).startswith("$len(@classes)"):
        # the class list is read from the data; give the head size directly so that no demo set is generated
        overrides["num_classes"] = meta["network_data_format"]["outputs"]["pred"]["num_channels"]
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "train.json"),
        device="cpu",
        **overrides,
    )


def _local_schema() -> dict:
    jsonschema = pytest.importorskip("jsonschema")
    path = os.environ.get(SCHEMA_ENV)
    if not path or not Path(path).is_file():
        pytest.skip(f"set {SCHEMA_ENV} to a local copy of {SCHEMA_URL} for a full jsonschema validation")
    schema = json.loads(Path(path).read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)
    return schema


def test_the_local_schema_requires_what_this_test_checks():
    schema = _local_schema()
    assert set(schema["required"]) == set(REQUIRED)
    assert set(schema["$defs"]["tensor"]["required"]) == set(TENSOR_REQUIRED)
    assert set(schema["$defs"]["network_io"]["required"]) == set(NETWORK_IO_REQUIRED)


@pytest.mark.parametrize("name", BUNDLES)
def test_metadata_validates_against_the_local_schema(name):
    import jsonschema

    schema = _local_schema()
    jsonschema.validate(instance=_metadata(name), schema=schema)
