"""The synthetic LiTS-like CT demo set: LiTS layout, plausible HU, labels that make sense, exact affine, cached."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medtransfer.data import ensure_synthetic_lits, make_synthetic_lits, read_lits
from medtransfer.data.synthetic.lits import synthetic_lits_affine

SHAPE, SPACING = (64, 64, 32), (3.0, 3.0, 5.0)


def _load(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "lits_synthetic"
    make_synthetic_lits(out)
    return out


@pytest.fixture(scope="module")
def cases(default_set: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (_load(default_set / f"volume-{i}.nii.gz")[0], _load(default_set / f"segmentation-{i}.nii.gz")[0])
        for i in range(6)
    ]


def test_lits_layout_and_readme(default_set: Path) -> None:
    records = read_lits(default_set)  # also checks every pair's headers
    assert [r["id"] for r in records] == [f"volume-{i}" for i in range(6)]
    assert [Path(r["label"]).name for r in records] == [f"segmentation-{i}.nii.gz" for i in range(6)]
    volume = nib.load(records[0]["image"])
    label = nib.load(records[0]["label"])
    assert volume.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
    assert volume.shape == label.shape == SHAPE
    readme = (default_set / "SYNTHETIC_README.txt").read_text()
    assert "SYNTHETIC" in readme and "NOT medical data" in readme and "seed=0" in readme


def test_hounsfield_units_are_plausible(cases: list) -> None:
    for i, (volume, label) in enumerate(cases):
        assert volume.min() >= -1024 and volume.max() <= 3071, i
        corner = volume[:4, :4, :]  # outside the elliptical body: air
        assert abs(float(np.median(corner)) + 1000) < 15, i
        assert volume.max() > 400, i  # the vertebra
        assert (volume < -60).sum() > (volume < -500).sum() * 1.05  # a fat rim between air and soft tissue
        liver = volume[label == 1].mean()
        assert 45 <= liver <= 80, (i, liver)
        if (label == 2).any():
            tumour = volume[label == 2].mean()
            assert tumour < liver - 15 and tumour > -20, (i, liver, tumour)
        noise = volume[label == 1].astype(float).std()
        assert 5 < noise < 40, (i, noise)


def test_labels_liver_in_right_upper_abdomen_and_tumours_inside(default_set: Path, cases: list) -> None:
    affine = synthetic_lits_affine(SHAPE, SPACING)
    n_with_tumour = 0
    for i, (volume, label) in enumerate(cases):
        assert set(np.unique(label)) <= {0, 1, 2}, i
        liver = label >= 1
        slices = np.flatnonzero(liver.any(axis=(0, 1)))
        assert len(slices) >= 0.6 * SHAPE[2], (i, slices)  # spans most slices
        assert ndimage.label(liver)[1] == 1, i  # one connected organ
        # world (RAS) coordinates: the liver lies to the patient's right (+x) of the bright midline vertebra
        liver_x = (affine @ [*ndimage.center_of_mass(liver), 1])[0]
        spine_x = (affine @ [*ndimage.center_of_mass(volume > 400), 1])[0]
        assert liver_x > spine_x + 20, (i, liver_x, spine_x)
        tumour = label == 2
        if tumour.any():
            n_with_tumour += 1
            # inside the liver: no tumour voxel touches background, even across a face
            assert not (ndimage.binary_dilation(tumour) & (label == 0)).any(), i
    assert n_with_tumour >= 2  # the default seed gives a set with tumours to learn


def test_affine_is_the_one_written(default_set: Path) -> None:
    expected = synthetic_lits_affine(SHAPE, SPACING)
    assert np.all(np.diag(expected)[:3] == [-3.0, -3.0, 5.0]) and np.all(expected[:3, 3] != 0)
    for name in ("volume-2.nii.gz", "segmentation-2.nii.gz"):
        image = nib.load(str(default_set / name))
        np.testing.assert_allclose(image.affine, expected, atol=1e-4)
        np.testing.assert_allclose(image.get_qform(), expected, atol=1e-4)
        assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
        assert image.header.get_zooms() == SPACING


def test_deterministic_per_seed(tmp_path: Path) -> None:
    kwargs = {"shape": (24, 24, 16), "spacing": (4.0, 4.0, 6.0)}
    a = make_synthetic_lits(tmp_path / "a", n_volumes=3, seed=5, **kwargs)
    b = make_synthetic_lits(tmp_path / "b", n_volumes=3, seed=5, **kwargs)
    c = make_synthetic_lits(tmp_path / "c", n_volumes=3, seed=6, **kwargs)
    d = make_synthetic_lits(tmp_path / "d", n_volumes=2, seed=5, **kwargs)
    files = sorted(p.name for p in a.glob("*.nii.gz"))
    assert len(files) == 6 and files == sorted(p.name for p in b.glob("*.nii.gz"))
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
        assert (a / name).read_bytes() != (c / name).read_bytes(), name
    assert sorted(p.name for p in d.glob("*.nii.gz")) == [n for n in files if not n.endswith("-2.nii.gz")]
    for p in d.glob("*.nii.gz"):  # volume N does not depend on how many are made
        assert p.read_bytes() == (a / p.name).read_bytes(), p.name


def test_ensure_caches_and_regenerates(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    kwargs = {"n_volumes": 3, "shape": (24, 24, 16), "spacing": (4.0, 4.0, 6.0), "seed": 1}
    assert ensure_synthetic_lits(out, **kwargs) == str(out)
    files = sorted(p for p in out.iterdir() if p.is_file())
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    ensure_synthetic_lits(out, **kwargs)
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes, "regenerated a complete set"

    victim = out / "segmentation-1.nii.gz"
    victim.unlink()
    ensure_synthetic_lits(out, **kwargs)
    assert victim.is_file() and len(read_lits(out)) == 3

    before = (out / "volume-0.nii.gz").read_bytes()
    ensure_synthetic_lits(out, **{**kwargs, "seed": 2})  # other parameters: regenerated
    assert (out / "volume-0.nii.gz").read_bytes() != before
    ensure_synthetic_lits(out, **{**kwargs, "n_volumes": 2, "seed": 2})  # fewer volumes: no stale cases
    assert [r["id"] for r in read_lits(out)] == ["volume-0", "volume-1"]
    ensure_synthetic_lits(out, **{**kwargs, "n_volumes": 2, "seed": 2, "shape": (32, 24, 16)})
    assert nib.load(str(out / "volume-1.nii.gz")).shape == (32, 24, 16)


def test_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_volumes"):
        make_synthetic_lits(tmp_path, n_volumes=0)
    with pytest.raises(ValueError, match="shape"):
        ensure_synthetic_lits(tmp_path, shape=(64, 64))
    with pytest.raises(ValueError, match="spacing"):
        make_synthetic_lits(tmp_path, spacing=(3.0, 0.0, 5.0))
    assert not list(tmp_path.glob("*.nii.gz"))
