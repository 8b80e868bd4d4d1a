"""POCUS clip listing (metadata table and prefixes), patient grouping and PyAV frame decoding (real data where
available)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import av
import numpy as np
import pytest

from medtransfer.bundling import bundle_path
from medtransfer.data.pocus import (
    METADATA_FILE,
    POCUS_CLASSES,
    clip_group,
    metadata_key,
    read_clip_frames,
    read_pocus_clips,
)
from medtransfer.data.pocus_datalist import extract_pocus_frames, pocus_class_names, pocus_datalist
from medtransfer.errors import DatasetError

_CLIPS = {"written": 0}


def _write_video(path: Path, n_frames: int = 6, size: int = 32) -> Path:
    """A tiny MPEG-4 clip whose frames get brighter over time (an MP4 file whatever the name's extension); a block
    whose shade counts the clips written makes every clip's content its own (copies would be one clip to a split)."""
    _CLIPS["written"] += 1
    low, high = (_CLIPS["written"] % 16) * 16, (_CLIPS["written"] // 16 % 16) * 16
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(n_frames):
            img = np.full((size, size, 3), 20 + 30 * t, dtype=np.uint8)
            img[: size // 2, : size // 2] = 255
            img[size // 2 :, size // 2 :] = low
            img[size // 2 :, : size // 2] = high
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _tmp_pocus(tmp_path: Path, names: dict[str, list[str]]) -> Path:
    root = tmp_path / "pocus"
    for probe in ("convex", "linear"):
        (root / "pocus_videos" / probe).mkdir(parents=True)
        (root / "pocus_images" / probe).mkdir(parents=True)
        for name in names.get(probe, []):
            _write_video(root / "pocus_videos" / probe / name)
    return root


@pytest.mark.parametrize(
    ("stem", "group"),
    [
        ("Reg_pat1Image_132943", "Reg_pat1"),
        ("Cov_convex_volpecelli_sonographic_v3", "Cov_convex_volpecelli_sonographic"),
        ("Reg_recommendations_alines_mov1", "Reg_recommendations_alines"),
        ("Pneu_prospective_file3", "Pneu_prospective_file"),
        ("Reg_Image_182340", "Reg_Image_182340"),
        ("Reg_Image_182106_crop", "Reg_Image_182106_crop"),
    ],
)
def test_clip_group_rule(stem, group):
    assert clip_group(stem) == group


@pytest.mark.realdata
def test_real_convex_clips_and_groups(need):
    root = need("pocus")
    clips = read_pocus_clips(root, probe="convex")
    assert {c["class_name"] for c in clips} == {"covid19", "regular"}
    assert all(c["kind"] == "video" and c["probe"] == "convex" for c in clips)
    assert all(POCUS_CLASSES[c["label"]] == c["class_name"] for c in clips)
    group_of = {c["clip"]: c["group"] for c in clips}
    pat1 = [c for c in clips if c["clip"].startswith("Reg_pat1Image_")]
    # the table gives Reg_pat1Image_* and two Reg_Image_*_crop clips one patient id (4): one group, whatever the names
    assert len(pat1) >= 2 and {c["group"] for c in pat1} == {"patient:4"}
    assert group_of["Reg_Image_182106_crop"] == group_of["Reg_Image_182340_crop"] == "patient:4"
    volpe = [c for c in clips if "volpecelli_sonographic" in c["clip"]]
    assert len(volpe) >= 2 and len({c["group"] for c in volpe}) == 1

    linear = read_pocus_clips(root, probe="linear")
    both = read_pocus_clips(root, probe="all")
    assert {c["probe"] for c in linear} == {"linear"}
    assert {c["path"] for c in linear}.isdisjoint(c["path"] for c in clips)
    assert len(both) == len(clips) + len(linear)
    with_images = read_pocus_clips(root, probe="convex", include_images=True)
    assert any(c["kind"] == "image" for c in with_images)


@pytest.mark.realdata
def test_real_clip_decodes(need):
    root = need("pocus")
    clip = min(read_pocus_clips(root, probe="convex"), key=lambda c: Path(c["path"]).stat().st_size)
    frames = read_clip_frames(clip["path"], max_frames=4, size=64)
    assert frames.shape == (4, 64, 64) and frames.dtype == np.uint8
    assert frames.std() > 0


@pytest.mark.realdata
def test_truncated_real_clip_raises(need, tmp_path):
    root = need("pocus")
    clip = min(read_pocus_clips(root, probe="convex"), key=lambda c: Path(c["path"]).stat().st_size)
    bad = tmp_path / ("truncated" + Path(clip["path"]).suffix)
    bad.write_bytes(Path(clip["path"]).read_bytes()[:2048])
    with pytest.raises(DatasetError, match="truncated") as info:
        read_clip_frames(bad)
    assert str(bad) in str(info.value) and "re-encode" in str(info.value)


def test_synthetic_clip_sampling(tmp_path):
    path = _write_video(tmp_path / "Reg_x.mp4", n_frames=6)
    full = read_clip_frames(path)
    assert full.shape == (6, 32, 32) and full.dtype == np.uint8
    assert read_clip_frames(path, every=2).shape[0] == 3
    spread = read_clip_frames(path, max_frames=2)  # evenly spaced: first and last frame
    assert np.array_equal(spread[0], full[0]) and np.array_equal(spread[1], full[-1])


def test_still_image_is_one_frame(tmp_path):
    from PIL import Image

    path = tmp_path / "Cov_still.png"
    Image.fromarray(np.arange(40 * 30, dtype=np.uint8).reshape(40, 30) % 251).convert("RGB").save(path)
    frames = read_clip_frames(path, size=16)
    assert frames.shape == (1, 16, 16) and frames.dtype == np.uint8


def test_unknown_prefix_error_vir_ignored_and_extra_classes(tmp_path, caplog):
    root = _tmp_pocus(tmp_path, {"convex": ["Cov_a_v1.mp4", "Reg_b.mp4", "Vir_c.mp4", "Zzz-d.mp4"]})
    with pytest.raises(DatasetError, match=r"Zzz-d\.mp4.*--unknown_files skip") as err:
        read_pocus_clips(root)
    assert "Vir_c" not in str(err.value)  # Vir is a known class, left out by default, not an error
    with caplog.at_level(logging.WARNING, logger="medtransfer.data.pocus"):
        clips = read_pocus_clips(root, unknown_files="skip")
    assert sorted(c["clip"] for c in clips) == ["Cov_a_v1", "Reg_b"]
    assert "Zzz-d.mp4" in caplog.text and "Vir_c.mp4" not in caplog.text

    classes = (*POCUS_CLASSES, "viral")
    clips = read_pocus_clips(root, classes=classes, unknown_files="skip")
    vir = [c for c in clips if c["clip"] == "Vir_c"]
    assert len(vir) == 1 and vir[0]["class_name"] == "viral" and vir[0]["label"] == 3
    clips = read_pocus_clips(root, classes=(*POCUS_CLASSES, "zed"), extra_classes={"Zzz": "zed"})
    zed = [c for c in clips if c["clip"] == "Zzz-d"]
    assert len(zed) == 1 and zed[0]["label"] == 3


def test_missing_folder_and_no_clips(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_pocus_clips(tmp_path / "nowhere")
    root = _tmp_pocus(tmp_path, {"convex": ["Reg_b.mp4"]})
    with pytest.raises(DatasetError, match="no POCUS clip"):
        read_pocus_clips(root, classes=("covid19",))
    with pytest.raises(DatasetError, match="no POCUS clip"):
        read_pocus_clips(root, probe="linear")


def test_zero_frame_or_missing_clip(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_clip_frames(tmp_path / "missing.mp4")
    empty = tmp_path / "Reg_empty.mp4"
    with av.open(str(empty), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 16
    with pytest.raises(DatasetError, match="Reg_empty.mp4"):
        read_clip_frames(empty)


# --- the official repository's data/ folder, as published ------------------------------------------------------------

# The header line of the real dataset_metadata.csv (the column names only, no data).
METADATA_HEADER = (
    "Date added,Current location,Filename,URL (Video Name),Label,Lung Severity Score,License,LinkToLicense,"
    "ChangesMade,InThisRepo,Type,Probe,DOI,Source ID,Comments from web site,Title,Comments first medical doctor (MD1),"
    "MD2,MD3,Framerate,Resolution,Length (frames),Gender,Age,Patient ID / Name,Lung /abdomen interface,"
    "Preconditions / Comments about patient,Area according to DEGUM,,Effusion,Consolidations,B-lines,A-lines,"
    "Pleural line irregularities,Air bronchogram,Healthy,Fever,Cough,Respiratory problems,Headache,"
    "Loss of smell/taste,Fatigue,Sore throat,Asymptomatic,Other"
)

# (folder, file name, metadata row or None: (Filename as written in the table, Label, Probe, Patient ID / Name))
OFFICIAL_FILES = [
    ("pocus_videos/Convex", "Cov-Butterfly-COVID Lung 2.mp4", ("Cov-Butterfly-COVID Lung 2", "COVID-19", "convex", "")),
    ("pocus_videos/Convex", "pneu-gred-6.mp4", ("pneu-gred-6", "Bacterial pneumonia", "convex", "49")),
    ("pocus_videos/Convex", "Reg_pat1Image_132943.mpeg", ("Reg_pat1Image_132943", "regular", "convex", "4")),
    ("pocus_videos/Convex", "Reg_Image_182106_crop.mp4", ("Reg_Image_182106_crop", "regular", "convex", "4")),
    ("pocus_videos/Convex", "Vir_whitelung_h1n1.mp4", ("Vir_whitelung_h1n1", "Viral pneumonia", "convex", "99")),
    # a name no prefix rule reads, listed with extension, odd case and spacing, and a capitalised label
    ("pocus_videos/Convex", "butterfly lung 7.mov", (" Butterfly  Lung 7.MOV ", "Regular", "convex", "")),
    # the table wins over the prefix
    ("pocus_videos/Convex", "Cov_looksREG_vid15.mp4", ("Cov_looksREG_vid15", "regular", "convex", "137")),
    # not in the table: the prefix, in any case
    ("pocus_videos/Convex", "cov_lower_v1.mp4", None),
    ("pocus_videos/Convex", "COV_upper_v2.mp4", None),
    ("pocus_videos/Convex", "REG-other.mp4", None),
    # listed once per probe, with another patient id each
    ("pocus_videos/Convex", "Reg-nephropocus.mp4", ("Reg-nephropocus", "regular", "convex", "74")),
    ("pocus_videos/Linear", "Reg-nephropocus.mp4", ("Reg-nephropocus", "regular", "linear", "77")),
    ("pocus_videos/Linear", "Pneu_prospective_file3.mp4", ("Pneu_prospective_file3", "Bacterial pneumonia", "linear", "117")),
    ("pocus_images/Convex", "Cov_Oliviera_2020_Fig4A.jpg", ("Cov_Oliviera_2020_Fig4A", "COVID-19", "convex", "220")),
    ("pocus_images/Linear", "Cov_Oliviera_2020_Fig14.jpg", ("Cov_Oliviera_2020_Fig14", "COVID-19", "linear", "220")),
]  # fmt: skip

# What each file must come out as (written by hand from the rows above, not computed by the reader's rules).
EXPECTED_CLASS = {
    "Cov-Butterfly-COVID Lung 2": "covid19",
    "pneu-gred-6": "pneumonia",
    "Reg_pat1Image_132943": "regular",
    "Reg_Image_182106_crop": "regular",
    "Vir_whitelung_h1n1": "viral",
    "butterfly lung 7": "regular",
    "Cov_looksREG_vid15": "regular",
    "cov_lower_v1": "covid19",
    "COV_upper_v2": "covid19",
    "REG-other": "regular",
    "Reg-nephropocus": "regular",
    "Pneu_prospective_file3": "pneumonia",
    "Cov_Oliviera_2020_Fig4A": "covid19",
    "Cov_Oliviera_2020_Fig14": "covid19",
}
ALL_CLASSES = (*POCUS_CLASSES, "viral")
# what the defaults read: convex videos, no viral class
DEFAULT_CLIPS = {Path(name).stem for folder, name, _ in OFFICIAL_FILES if folder == "pocus_videos/Convex"} - {
    "Vir_whitelung_h1n1"
}


def _write_metadata(root: Path, rows: list[tuple[str, str, str, str]], header: str = METADATA_HEADER) -> None:
    columns = header.split(",")
    with (root / METADATA_FILE).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for name, label, probe, patient in rows:
            row = dict.fromkeys(columns, "") | {"Filename": name, "Label": label, "Probe": probe}
            writer.writerow(row | {"Patient ID / Name": patient, "Type": "video", "InThisRepo": "Yes"})


@pytest.fixture
def official(tmp_path) -> Path:
    """A tree laid out as the official repository's data/ folder: capitalised probe folders, mixed-case prefixes, a
    name only the table labels, a metadata table with the real column names; tiny decodable clips and images."""
    from PIL import Image

    root = tmp_path / "data"
    for folder, name, _ in OFFICIAL_FILES:
        (root / folder).mkdir(parents=True, exist_ok=True)
        if folder.startswith("pocus_videos"):
            _write_video(root / folder / name, n_frames=3, size=16)
        else:
            Image.fromarray(np.full((16, 16), 99, np.uint8)).save(root / folder / name)
    (root / "pocus_videos" / "Linear" / "label_uncertain").mkdir()
    (root / "pocus_videos" / "Linear" / "label_uncertain" / "Zzz_not_read.mp4").write_bytes(b"")
    _write_metadata(root, [row for _, _, row in OFFICIAL_FILES if row is not None])
    return root


def test_official_tree_classes_from_metadata_then_prefix(official):
    clips = read_pocus_clips(official, probe="all", classes=ALL_CLASSES, include_images=True)
    assert {c["clip"]: c["class_name"] for c in clips} == EXPECTED_CLASS  # Reg-nephropocus twice, one class
    assert len(clips) == len(OFFICIAL_FILES)
    assert all(ALL_CLASSES[c["label"]] == c["class_name"] for c in clips)
    assert {(c["probe"], c["kind"]) for c in clips} == {
        ("convex", "video"), ("linear", "video"), ("convex", "image"), ("linear", "image")
    }  # fmt: skip
    # the default classes leave viral out; videos only unless include_images
    convex = read_pocus_clips(official)
    assert {c["clip"] for c in convex} == DEFAULT_CLIPS and len(DEFAULT_CLIPS) == 10
    assert all(c["probe"] == "convex" and c["kind"] == "video" for c in convex)


def test_official_tree_groups_follow_patient_ids(official):
    clips = read_pocus_clips(official, probe="all", classes=ALL_CLASSES, include_images=True)
    group = {(c["probe"], c["kind"], c["clip"]): c["group"] for c in clips}
    video = {c["clip"]: c["group"] for c in clips if c["kind"] == "video" and c["probe"] == "convex"}
    # one patient id (4) joins clips whose names the series rule keeps apart
    assert video["Reg_pat1Image_132943"] == video["Reg_Image_182106_crop"] == "patient:4"
    # figures of one patient across probes and folders
    assert (
        group[("convex", "image", "Cov_Oliviera_2020_Fig4A")] == group[("linear", "image", "Cov_Oliviera_2020_Fig14")]
    )
    # no patient id: the series rule
    assert video["cov_lower_v1"] == "cov_lower" and video["Cov-Butterfly-COVID Lung 2"] == "Cov-Butterfly-COVID Lung"
    # a name listed once per probe takes its own probe's row; both files are one series, so one group with both ids
    linear = {c["clip"]: c["group"] for c in read_pocus_clips(official, probe="linear", classes=ALL_CLASSES)}
    assert linear["Reg-nephropocus"] == "patient:77"
    assert group[("convex", "video", "Reg-nephropocus")] == group[("linear", "video", "Reg-nephropocus")]
    assert group[("convex", "video", "Reg-nephropocus")] == "patient:74+77"
    assert video == {
        "Cov-Butterfly-COVID Lung 2": "Cov-Butterfly-COVID Lung", "pneu-gred-6": "patient:49",
        "Reg_pat1Image_132943": "patient:4", "Reg_Image_182106_crop": "patient:4", "Vir_whitelung_h1n1": "patient:99",
        "butterfly lung 7": "butterfly lung", "Cov_looksREG_vid15": "patient:137", "cov_lower_v1": "cov_lower",
        "COV_upper_v2": "COV_upper", "REG-other": "REG-other", "Reg-nephropocus": "patient:74+77",
    }  # fmt: skip


def test_official_tree_unknown_file_error_or_skip(official, caplog):
    odd = official / "pocus_videos" / "Convex" / "Unlabelled clip 3.mp4"
    odd.write_bytes(b"")
    with pytest.raises(DatasetError) as err:
        read_pocus_clips(official)
    message = str(err.value)
    assert f"{odd} (not in dataset_metadata.csv, and prefix 'Unlabelled clip 3' is not a known one)" in message
    assert "--unknown_files skip" in message and "prefixes Cov, Pneu, Reg, Vir" in message
    assert "Reg_pat1Image" not in message  # only the unknown file is named
    with caplog.at_level(logging.WARNING, logger="medtransfer.data.pocus"):
        clips = read_pocus_clips(official, unknown_files="skip")
    assert {c["clip"] for c in clips} == DEFAULT_CLIPS
    assert "left out 1 POCUS file" in caplog.text and "Unlabelled clip 3.mp4" in caplog.text
    with pytest.raises(DatasetError, match="unknown_files must be one of error, skip"):
        read_pocus_clips(official, unknown_files="ignore")


def test_unknown_metadata_label_names_file_and_can_be_mapped(official):
    rows = [row for _, _, row in OFFICIAL_FILES if row is not None]
    rows.append(("REG-other", "Other lung disease", "convex", "300"))  # the table now lists it, with a new label
    _write_metadata(official, rows)
    with pytest.raises(DatasetError, match=r"REG-other\.mp4 \(dataset_metadata\.csv label 'Other lung disease'"):
        read_pocus_clips(official)
    clips = read_pocus_clips(
        official, classes=ALL_CLASSES, extra_classes={"other LUNG disease": "viral"}
    )  # labels match in any case
    assert {c["clip"]: c["class_name"] for c in clips}["REG-other"] == "viral"

    rows += [("COV_upper_v2", "COVID-19", "convex", ""), ("cov_upper_v2", "regular", "convex", "")]
    _write_metadata(official, rows)
    with pytest.raises(DatasetError, match=r"COV_upper_v2\.mp4 \(its dataset_metadata\.csv rows disagree"):
        read_pocus_clips(official, extra_classes={"other LUNG disease": "viral"})


def test_without_metadata_prefixes_rule_and_only_metadata_names_fail(official):
    (official / METADATA_FILE).unlink()
    with pytest.raises(DatasetError, match=r"butterfly lung 7\.mov \(prefix 'butterfly lung 7' is not a known one\)"):
        read_pocus_clips(official)
    clips = read_pocus_clips(official, unknown_files="skip", probe="all", classes=ALL_CLASSES)
    by_clip = {c["clip"]: c for c in clips}
    assert "butterfly lung 7" not in by_clip
    assert by_clip["Cov_looksREG_vid15"]["class_name"] == "covid19"  # the prefix, now that no table says otherwise
    assert by_clip["pneu-gred-6"]["class_name"] == "pneumonia"
    assert all(c["group"] == clip_group(c["clip"]) for c in clips)  # no patient ids: the series rule alone


def test_metadata_table_without_label_column(official):
    _write_metadata(official, [], header=METADATA_HEADER.replace(",Label,", ",Diagnosis,"))
    with pytest.raises(DatasetError, match=r"dataset_metadata\.csv has no 'Filename' and 'Label' columns"):
        read_pocus_clips(official)


def test_probe_folder_in_any_case_and_missing(tmp_path):
    root = tmp_path / "data"
    (root / "POCUS_videos" / "CONVEX").mkdir(parents=True)
    (root / "POCUS_videos" / "CONVEX" / "Reg_a.mp4").write_bytes(b"")
    assert [c["probe"] for c in read_pocus_clips(root, probe="Convex")] == ["convex"]
    with pytest.raises(DatasetError, match=r"pocus_videos/linear not found \(in any case\)"):
        read_pocus_clips(root, probe="linear")


@pytest.mark.parametrize(
    ("name", "key"),
    [("Cov-Butterfly-COVID Lung 2", "cov-butterfly-covid lung 2"), (" Cov-Butterfly-COVID  Lung 2.MP4 ",
     "cov-butterfly-covid lung 2"), ("Reg_a.mpeg", "reg_a"), ("Cov_fig1.v2", "cov_fig1.v2")],
)  # fmt: skip
def test_metadata_key(name, key):
    assert metadata_key(name) == key


# the metadata's labels as the dataset documents them, written out here independently of the reader's own table
_REAL_LABELS = {
    "covid-19": "covid19",
    "bacterial pneumonia": "pneumonia",
    "regular": "regular",
    "viral pneumonia": "viral",
}


@pytest.mark.realdata
def test_real_files_take_their_metadata_class(need):
    root = need("pocus")
    with (root / "dataset_metadata.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    label_of: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        label_of.setdefault((row["Filename"].strip().lower(), row["Probe"].strip().lower()), set()).add(row["Label"])
    files = [
        p for sub in ("pocus_videos", "pocus_images") for probe in (root / sub).iterdir() if probe.is_dir()
        for p in probe.iterdir() if p.is_file()
    ]  # fmt: skip
    clips = read_pocus_clips(root, probe="all", classes=ALL_CLASSES, include_images=True)
    assert sorted(c["path"] for c in clips) == sorted(str(p) for p in files)  # every file, each once
    for clip in clips:
        path = Path(clip["path"])
        labels = label_of[(path.stem.lower(), path.parent.name.lower())]  # a KeyError: a file the table lacks
        assert len(labels) == 1, path
        assert clip["class_name"] == _REAL_LABELS[labels.pop().lower()], path
    patient_of = {(r["Filename"].strip().lower(), r["Probe"].strip().lower()): r["Patient ID / Name"] for r in rows}
    by_patient: dict[str, set[str]] = {}
    for clip in clips:
        patient = patient_of[(clip["clip"].lower(), clip["probe"])].strip()
        if patient:
            by_patient.setdefault(patient, set()).add(clip["group"])
    assert by_patient and all(len(groups) == 1 for groups in by_patient.values())  # one patient, one group


def test_datalist_and_frame_extraction_take_the_clip_options(official, tmp_path):
    (official / "pocus_videos" / "Convex" / "Unlabelled clip 3.mp4").write_bytes(b"")
    options = {"probe": "all", "include_images": True, "unknown_files": "skip", "extra_classes": None}
    with pytest.raises(DatasetError, match=r"Unlabelled clip 3\.mp4"):
        pocus_class_names(official)
    assert pocus_class_names(official, **options) == ["covid19", "pneumonia", "regular"]
    fast = {"fps": None, "max_frames": 1, "image_size": 8}
    parts = {
        s: pocus_datalist(official, split=s, fold=0, num_folds=2, **options, **fast) for s in ("train", "val", "test")
    }
    records = [r for part in parts.values() for r in part]
    expected = {stem: cls for stem, cls in EXPECTED_CLASS.items() if cls != "viral"}
    assert {r["clip"] for r in records} == set(expected)  # the still images too, the unknown clip left out
    names = ["covid19", "pneumonia", "regular"]
    assert all(names[r["label"]] == expected[r["clip"]] for r in records)
    assert not {r["group"] for r in parts["train"]} & {r["group"] for r in parts["test"]}

    out = extract_pocus_frames(official, tmp_path / "frames", num_folds=2, image_size=8, max_frames=1, **options)
    assert pocus_class_names(out, "pocus_frames", **options) == names  # the frame format takes and ignores them
    extracted = pocus_datalist(out, "pocus_frames", split="test", fold=0, num_folds=2, **options)
    assert {r["clip"] for r in extracted} == {r["clip"] for r in parts["test"]}  # the same patient-grouped folds


def test_bundle_settings_reach_the_reader(official):
    """`--unknown_files`, `--include_images`, `--probe`, `--extra_classes` are settings of the POCUS bundle, and the
    class list and datalists it builds follow them."""
    from monai.bundle import ConfigParser

    from medtransfer.launch import project_error

    (official / "pocus_videos" / "Convex" / "Unlabelled clip 3.mp4").write_bytes(b"")
    parser = ConfigParser()
    parser.read_config(bundle_path("pocus_classification") / "configs" / "train.json")
    parser.update({"dataset_dir": str(official)})
    with pytest.raises(RuntimeError) as err:  # the bundle wraps what its expressions raise
        parser.get_parsed_content("classes")
    error = project_error(err.value)
    assert isinstance(error, DatasetError)
    assert "Unlabelled clip 3.mp4" in str(error) and "--unknown_files skip" in str(error)

    parser.update({"unknown_files": "skip", "include_images": True, "probe": "all"})
    args = parser.get_parsed_content("datalist_args")
    assert {k: args[k] for k in ("probe", "include_images", "unknown_files", "extra_classes")} == {
        "probe": "all", "include_images": True, "unknown_files": "skip", "extra_classes": None
    }  # fmt: skip
    assert args["classes"] == ["covid19", "pneumonia", "regular"]
    parser.update({"unknown_files": "error", "extra_classes": {"Unlabelled clip 3": "regular"}})
    assert parser.get_parsed_content("classes") == ["covid19", "pneumonia", "regular"]  # mapped: no error
    for key in ("include_images", "unknown_files", "extra_classes"):
        assert parser.get(f"run_settings#{key}") == parser.get(f"split_settings#{key}") == f"@{key}"
