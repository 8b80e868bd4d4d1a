"""Natural-image datasets of the layer-wise transferability study (Chen et al. 2022) as medtransfer records.

"Rethinking Two Consensuses of the Transferability in Deep Learning" fine-tunes one pre-trained network on many
natural-image sets and regresses layer-wise transferability on the training-set size, so every set must come
through one entry point with a fixed, documented split. Each set here is a format of :mod:`medtransfer.data.registry`
(:data:`FORMATS`), read with :func:`~medtransfer.data.registry.dataset_records` into the usual records
(``{"image": path or uint8 HxWx3 array, "label": int, "id": str}``); :class:`LoadRGBd` loads them, grey medical
images included, as (3,H,W) float tensors for ImageNet-style networks.

Split rules (``seed`` only matters where a split is drawn; the same seed always gives the same split):

- an official split is used where the set has one; where it has no official validation split, validation is a
  seeded, class-stratified :data:`VAL_FRACTION` of the official training part (never of the test part);
- Caltech-101 (no official split): :data:`CALTECH101_TRAIN_PER_CLASS` random images per class for training, the
  rest for test (the usual protocol); UC Merced (none): a stratified :data:`UCMERCED_TEST_FRACTION` for test.

Nothing is ever downloaded (torchvision datasets are built with ``download=False``); missing files raise
:class:`~medtransfer.errors.DatasetError` naming the root, the expected layout and the official source.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.data.imagefolder import folder_classes, image_folder_split, read_image_folder
from medtransfer.data.registry import DatasetFormat, Records, dataset_class_names, dataset_records
from medtransfer.data.splits import carve_val, split_records
from medtransfer.errors import DatasetError

VAL_FRACTION = 0.1  # of the training part, where a set has no official validation split
CALTECH101_TRAIN_PER_CLASS = 30
UCMERCED_TEST_FRACTION = 0.2
FLOWERS17_VAL_FRACTION = 0.25  # unsplit class folders -> 50/25/25, the proportions of the official 40/20/20 splits
POCUS_FOLD, POCUS_NUM_FOLDS = 0, 5

# Label order of torchvision's CIFAR10 (``batches.meta`` ``label_names``), which is also alphabetical.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DOMAINNET_DOMAINS = ("real", "painting", "clipart")


def _missing(name: str, root: Path, detail: str = "") -> DatasetError:
    """The one error for absent or unreadable data: dataset, root, expected tree, official source."""
    spec = NATURAL_FORMATS[name]
    layout = "\n".join("  " + line for line in spec.layout.format(root=root).splitlines())
    reason = f" ({detail})" if detail else ""
    return DatasetError(
        f"{name} not found under {root}{reason}: expected\n{layout}\n"
        f"download from {spec.source} and extract there (nothing is downloaded automatically)"
    )


def _torchvision(name: str, root: Path, build: Callable[[], Any]) -> Any:
    """Build a torchvision dataset (download=False), turning its bare RuntimeError into our DatasetError."""
    try:
        return build()
    except (RuntimeError, OSError, KeyError, ValueError, IndexError) as exc:
        detail = f"torchvision rejected the files: {exc}; a file is missing, truncated or not the official release"
        raise _missing(name, root, detail) from exc


def _carve_val(records: Records, split: str, seed: int) -> Records:
    """Train or val part of an official training set: val is a seeded, stratified VAL_FRACTION of it."""
    return carve_val(records, split, VAL_FRACTION, seed)


def _official_train_test(read_part: Callable[[bool], Records], split: str, seed: int) -> Records:
    """Records of a set with an official train/test split only: test as is, val carved from train."""
    if split == "test":
        return read_part(False)
    return _carve_val(read_part(True), split, seed)


def _folder_split(base: Path, split: str, seed: int, val_fraction: float) -> Records:
    """:func:`image_folder_split` with ids relative to `base` (``train/cat/0001.jpg``), unique across splits."""
    records = image_folder_split(base, split, seed=seed, val_fraction=val_fraction)
    return [r | {"id": Path(r["image"]).relative_to(base).as_posix()} for r in records]


def _pre_split(root: Path) -> bool:
    """A subset exported as ``{root}/train/<class>/`` and ``{root}/test/<class>/`` (e.g. ``natural/`` of the shared
    data): read as such when the release's own layout is absent."""
    return (root / "train").is_dir() and (root / "test").is_dir()


def _or_pre_split(name: str, records: Callable, classes: Callable, release: Callable[[Path], bool]):
    """A format's (records, classes) that fall back to the train/test class folders of a pre-split export."""

    def read(root: Path, split: str, seed: int) -> Records:
        if not release(root) and _pre_split(root):
            return _folder_split(root, split, seed, VAL_FRACTION)
        return records(root, split, seed)

    def names(root: Path) -> list[str]:
        if not release(root) and _pre_split(root):
            return folder_classes(root)
        return classes(root)

    read.__name__, names.__name__ = f"_{name}_records_any", f"_{name}_classes_any"
    return read, names


_PRE_SPLIT = ("\nor a pre-split export: {root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg (its own split, val "
              f"a seeded stratified {VAL_FRACTION:.0%} of train/)")


def _class_folder_root(candidates: list[Path]) -> Path | None:
    """The first candidate holding class folders (directly or under ``train/``), else None."""
    for base in candidates:
        inner = base / "train" if (base / "train").is_dir() else base
        if inner.is_dir() and sum(1 for p in inner.iterdir() if p.is_dir() and not p.name.startswith(".")) >= 2:
            return base
    return None


# --- CIFAR-10 / CIFAR-100: torchvision pickles or class folders ------------------------------------------------


def _cifar_parts(root: Path, hundred: bool) -> tuple[str, str]:
    name = "cifar100" if hundred else "cifar10"
    if (root / ("cifar-100-python" if hundred else "cifar-10-batches-py")).is_dir():
        return name, "pickle"
    if (root / "train").is_dir() and (root / "test").is_dir():
        return name, "folders"
    raise _missing(name, root)


def _cifar_torchvision(root: Path, hundred: bool, train: bool) -> Any:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR100 if hundred else CIFAR10
    return _torchvision("cifar100" if hundred else "cifar10", root, lambda: cls(str(root), train=train, download=False))


def _cifar_folder_classes(root: Path, hundred: bool) -> list[str]:
    """Folder names, checked against CIFAR-10's label order (CIFAR-100's fine labels are alphabetical too)."""
    classes = folder_classes(root)
    if not hundred and classes != list(CIFAR10_CLASSES):
        raise DatasetError(f"{root}/train holds the class folders {classes}; CIFAR-10 needs {list(CIFAR10_CLASSES)}")
    if hundred and len(classes) != 100:
        raise DatasetError(f"{root}/train holds {len(classes)} class folders; CIFAR-100 has 100 (fine labels)")
    return classes


def _cifar_records(root: Path, split: str, seed: int, hundred: bool) -> Records:
    name, kind = _cifar_parts(root, hundred)
    if kind == "folders":
        _cifar_folder_classes(root, hundred)
        return _folder_split(root, split, seed, VAL_FRACTION)

    def part(train: bool) -> Records:
        ds = _cifar_torchvision(root, hundred, train)
        prefix = "train" if train else "test"
        return [{"image": ds.data[i], "label": int(t), "id": f"{prefix}/{i:05d}"} for i, t in enumerate(ds.targets)]

    return _official_train_test(part, split, seed)


def _cifar_classes(root: Path, hundred: bool) -> list[str]:
    _, kind = _cifar_parts(root, hundred)
    if kind == "folders":
        return _cifar_folder_classes(root, hundred)
    return list(_cifar_torchvision(root, hundred, train=False).classes)


# --- Caltech-101 (torchvision; no official split) --------------------------------------------------------------


def _caltech101_all(root: Path) -> tuple[Records, list[str]]:
    base = root / "caltech101" / "101_ObjectCategories"
    if not base.is_dir():  # checked first: torchvision would create root/caltech101 before failing
        raise _missing("caltech101", root)
    if not (base / "BACKGROUND_Google").is_dir():  # torchvision removes it from the classes and fails without it
        raise _missing("caltech101", root, f"{base}/BACKGROUND_Google is missing: extract the complete folder")
    from torchvision.datasets import Caltech101

    ds = _torchvision("caltech101", root, lambda: Caltech101(str(root), target_type="category", download=False))
    records = []
    for number, label in zip(ds.index, ds.y, strict=True):
        category = ds.categories[label]
        path = base / category / f"image_{number:04d}.jpg"  # torchvision's own naming rule
        if not path.is_file():
            raise DatasetError(
                f"{path} not found: torchvision expects {base}/{category}/image_0001.jpg .. image_NNNN.jpg numbered "
                "without gaps and nothing else in the folder; re-extract 101_ObjectCategories"
            )
        records.append({"image": str(path), "label": int(label), "id": f"{category}/{path.name}"})
    return records, list(ds.categories)


def _caltech101_records(root: Path, split: str, seed: int) -> Records:
    records, classes = _caltech101_all(root)
    labels = np.array([r["label"] for r in records])
    rng = np.random.default_rng(seed)
    pool: list[int] = []
    test: list[int] = []
    for label, name in enumerate(classes):
        idx = np.flatnonzero(labels == label)
        if len(idx) <= CALTECH101_TRAIN_PER_CLASS:
            raise DatasetError(
                f"Caltech-101 class {name!r} has {len(idx)} images; the split takes {CALTECH101_TRAIN_PER_CLASS} "
                "per class for training and needs at least one more for test"
            )
        perm = rng.permutation(idx)
        pool += perm[:CALTECH101_TRAIN_PER_CLASS].tolist()
        test += perm[CALTECH101_TRAIN_PER_CLASS:].tolist()
    return _official_train_test(lambda train: [records[i] for i in sorted(pool if train else test)], split, seed)


# --- CUB-200-2011 (its own text files) -------------------------------------------------------------------------

_CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def _cub_base(root: Path) -> Path:
    for base in (root / "CUB_200_2011", root):
        if (base / "images.txt").is_file():
            absent = [f for f in _CUB_FILES if not (base / f).is_file()]
            if absent:
                raise _missing("cub200", root, f"{base} lacks {', '.join(absent)}")
            return base
    raise _missing("cub200", root)


def _id_table(path: Path) -> dict[str, str]:
    """``<image_id> <value>`` lines (CUB's text files) -> {id: value}; a malformed line names the file."""
    table = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise DatasetError(f"{path} line {n} is {line!r}; expected '<id> <value>'")
        table[parts[0]] = parts[1].strip()
    return table


def _cub_classes(root: Path) -> list[str]:
    table = _id_table(_cub_base(root) / "classes.txt")
    return [table[k] for k in sorted(table, key=int)]


def _cub_records(root: Path, split: str, seed: int) -> Records:
    base = _cub_base(root)
    images, labels, is_train = (_id_table(base / f) for f in _CUB_FILES[:3])
    if not (images.keys() == labels.keys() == is_train.keys()):
        raise DatasetError(f"{base}: images.txt, image_class_labels.txt and train_test_split.txt list different ids")

    def part(train: bool) -> Records:
        keep = [k for k in sorted(images, key=int) if (is_train[k] == "1") == train]
        return [{"image": str(base / "images" / images[k]), "label": int(labels[k]) - 1, "id": images[k]} for k in keep]

    return _official_train_test(part, split, seed)


# --- FGVC-Aircraft (torchvision, variants) ---------------------------------------------------------------------


def _aircraft(root: Path, part: str) -> Any:
    data = root / "fgvc-aircraft-2013b" / "data"
    needed = ["variants.txt", f"images_variant_{part}.txt", "images"]
    if not data.is_dir() or not all((data / f).exists() for f in needed):
        raise _missing("aircraft", root)
    from torchvision.datasets import FGVCAircraft

    return _torchvision(
        "aircraft", root, lambda: FGVCAircraft(str(root), split=part, annotation_level="variant", download=False)
    )


def _aircraft_records(root: Path, split: str, seed: int) -> Records:
    def part(train: bool) -> Records:
        ds = _aircraft(root, "trainval" if train else "test")
        return [
            {"image": str(f), "label": int(y), "id": Path(f).name}
            for f, y in zip(ds._image_files, ds._labels, strict=True)
        ]

    return _official_train_test(part, split, seed)


# --- Oxford Flowers-102 (torchvision, official train/val/test) --------------------------------------------------


def _flowers102_base(root: Path) -> Path:
    base = root / "flowers-102"
    if not ((base / "jpg").is_dir() and (base / "imagelabels.mat").is_file() and (base / "setid.mat").is_file()):
        raise _missing("flowers102", root)
    return base


def _flowers102_records(root: Path, split: str, seed: int) -> Records:
    _flowers102_base(root)
    from torchvision.datasets import Flowers102

    ds = _torchvision("flowers102", root, lambda: Flowers102(str(root), split=split, download=False))
    return [
        {"image": str(f), "label": int(y), "id": Path(f).name} for f, y in zip(ds._image_files, ds._labels, strict=True)
    ]


def _flowers102_classes(root: Path) -> list[str]:
    """``flower_001`` .. ``flower_102``: the release numbers its classes and ships no names."""
    from scipy.io import loadmat

    path = _flowers102_base(root) / "imagelabels.mat"
    try:
        n = int(np.max(loadmat(path, squeeze_me=True)["labels"]))
    except Exception as exc:
        raise _missing("flowers102", root, f"cannot read {path}: {exc}") from exc
    return [f"flower_{i:03d}" for i in range(1, n + 1)]


# --- DTD (torchvision, split 1) --------------------------------------------------------------------------------


def _dtd_data(root: Path, split: str = "train") -> Path:
    data = root / "dtd" / "dtd"
    if not ((data / "images").is_dir() and (data / "labels" / f"{split}1.txt").is_file()):
        raise _missing("dtd", root)
    return data


def _dtd_classes(root: Path) -> list[str]:
    """Sorted folders of ``images/`` (torchvision sorts the classes of a split file, which is the same set)."""
    images = _dtd_data(root) / "images"
    return sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))


def _dtd_records(root: Path, split: str, seed: int) -> Records:
    _dtd_data(root, split)
    classes = _dtd_classes(root)
    from torchvision.datasets import DTD

    ds = _torchvision("dtd", root, lambda: DTD(str(root), split=split, partition=1, download=False))
    records = []
    for f in ds._image_files:
        f = Path(f)
        if f.parent.name not in classes:
            raise DatasetError(f"{f} is listed in labels/{split}1.txt but its class folder is missing from images/")
        records.append({"image": str(f), "label": classes.index(f.parent.name), "id": f"{f.parent.name}/{f.name}"})
    return records


# --- Class-folder sets: Oxford Flowers-17, UC Merced, any image folder ------------------------------------------


def _flowers17_base(root: Path) -> Path:
    base = _class_folder_root([root / "flowers17", root])
    if base is None:
        raise _missing("flowers17", root)
    return base


def _flowers17_records(root: Path, split: str, seed: int) -> Records:
    return _folder_split(_flowers17_base(root), split, seed, FLOWERS17_VAL_FRACTION)


def _ucmerced_base(root: Path) -> Path:
    base = _class_folder_root([root / "UCMerced_LandUse" / "Images", root / "Images", root])
    if base is None:
        raise _missing("ucmerced", root)
    return base


def _ucmerced_records(root: Path, split: str, seed: int) -> Records:
    base = _ucmerced_base(root)
    records = read_image_folder(base, folder_classes(base))
    parts = split_records(records, (1 - UCMERCED_TEST_FRACTION, 0.0, UCMERCED_TEST_FRACTION), seed)
    return _official_train_test(lambda train: parts["train" if train else "test"], split, seed)


def _imagefolder_base(root: Path) -> Path:
    if _class_folder_root([root]) is None:
        raise _missing("imagefolder", root)
    return root


# --- DomainNet (per-domain split files) ------------------------------------------------------------------------


def _domainnet_lines(root: Path, domain: str, part: str) -> list[tuple[str, int]]:
    name = f"domainnet_{domain}"
    path = root / f"{domain}_{part}.txt"
    if not (root / domain).is_dir() or not path.is_file():
        raise _missing(name, root)
    lines = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit() or len(fields[0].split("/")) != 3:
            raise DatasetError(f"{path} line {n} is {line!r}; expected '{domain}/<class>/<file>.jpg <label>'")
        lines.append((fields[0], int(fields[1])))
    return lines


def _domainnet_classes(root: Path, domain: str) -> list[str]:
    """Class names by label, from the paths of both split files; a label used for two classes is an error."""
    names: dict[int, str] = {}
    for part in ("train", "test"):
        for rel, label in _domainnet_lines(root, domain, part):
            cls = rel.split("/")[1]
            if names.setdefault(label, cls) != cls:
                raise DatasetError(f"{root}/{domain}_{part}.txt gives label {label} to {names[label]!r} and {cls!r}")
    absent = sorted(set(range(max(names) + 1)) - names.keys())
    if absent:
        raise DatasetError(f"{root}/{domain}_train.txt and _test.txt never use the label(s) {absent}")
    return [names[i] for i in range(len(names))]


def _domainnet_records(root: Path, split: str, seed: int, domain: str) -> Records:
    def part(train: bool) -> Records:
        lines = _domainnet_lines(root, domain, "train" if train else "test")
        return [{"image": str(root / rel), "label": label, "id": rel} for rel, label in lines]

    return _official_train_test(part, split, seed)


# --- POCUS (our reader) ----------------------------------------------------------------------------------------


def _pocus_format(root: Path) -> str:
    if (root / "pocus_videos").is_dir():
        return "pocus_videos"
    if root.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        return "pocus_frames"
    raise _missing("pocus", root)


def _pocus_records(root: Path, split: str, seed: int) -> Records:
    """Fold POCUS_FOLD of POCUS_NUM_FOLDS, patient-grouped: grey uint8 frames, which LoadRGBd turns into RGB."""
    return dataset_records(_pocus_format(root), root, split, seed=seed, fold=POCUS_FOLD, num_folds=POCUS_NUM_FOLDS)


def _pocus_classes(root: Path) -> list[str]:
    return dataset_class_names(_pocus_format(root), root)


# --- the formats -------------------------------------------------------------------------------------------------

_CIFAR_FOLDERS = "or {root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg (class folders, e.g. a JPEG export)"
_VAL = f"val = seeded stratified {VAL_FRACTION:.0%} of the training part"


def _domainnet(domain: str) -> DatasetFormat:
    return DatasetFormat(
        name=f"domainnet_{domain}",
        layout=(
            f"{{root}}/{domain}/<class>/*.jpg\n{{root}}/{domain}_train.txt and {{root}}/{domain}_test.txt "
            f"(lines '{domain}/<class>/<file>.jpg <label>')"
        ),
        source="http://ai.bu.edu/M3SDA/ (DomainNet: the cleaned image zip and the train/test split files)",
        split_rule=f"official {domain}_train.txt / {domain}_test.txt; {_VAL}",
        records=lambda root, split, seed: _domainnet_records(root, split, seed, domain),
        classes=lambda root: _domainnet_classes(root, domain),
    )


NATURAL_FORMATS: dict[str, DatasetFormat] = {
    "cifar10": DatasetFormat(
        "cifar10",
        "{root}/cifar-10-batches-py/{{data_batch_1..5, test_batch, batches.meta}} "
        "(torchvision.datasets.CIFAR10 layout, the python version)\n" + _CIFAR_FOLDERS,
        "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-10 python version, cifar-10-python.tar.gz)",
        f"official train (50000) / test (10000); {_VAL}",
        lambda root, split, seed: _cifar_records(root, split, seed, hundred=False),
        lambda root: _cifar_classes(root, hundred=False),
    ),
    "cifar100": DatasetFormat(
        "cifar100",
        "{root}/cifar-100-python/{{train, test, meta}} (torchvision.datasets.CIFAR100 layout, the python version)\n"
        + _CIFAR_FOLDERS,
        "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-100 python version, cifar-100-python.tar.gz)",
        f"official train (50000) / test (10000), 100 fine labels; {_VAL}",
        lambda root, split, seed: _cifar_records(root, split, seed, hundred=True),
        lambda root: _cifar_classes(root, hundred=True),
    ),
    "caltech101": DatasetFormat(
        "caltech101",
        "{root}/caltech101/101_ObjectCategories/<class>/image_0001.jpg .. (torchvision.datasets.Caltech101 layout; "
        "BACKGROUND_Google is left out)" + _PRE_SPLIT,
        "https://data.caltech.edu/records/mzrjq-6wc02 (caltech-101.zip, then 101_ObjectCategories.tar.gz)",
        f"no official split: {CALTECH101_TRAIN_PER_CLASS} seeded random images per class for training, the rest "
        f"test; {_VAL}",
        *_or_pre_split("caltech101", _caltech101_records, lambda root: _caltech101_all(root)[1],
                       lambda root: (root / "caltech101" / "101_ObjectCategories").is_dir()),
    ),
    "cub200": DatasetFormat(
        "cub200",
        "{root}/CUB_200_2011/images/<class>/*.jpg\n"
        "{root}/CUB_200_2011/{{images.txt, image_class_labels.txt, train_test_split.txt, classes.txt}}",
        "https://www.vision.caltech.edu/datasets/cub_200_2011/ (CUB_200_2011.tgz)",
        f"official train_test_split.txt (5994 / 5794); {_VAL}",
        _cub_records,
        _cub_classes,
    ),
    "aircraft": DatasetFormat(
        "aircraft",
        "{root}/fgvc-aircraft-2013b/data/images/*.jpg\n"
        "{root}/fgvc-aircraft-2013b/data/{{variants.txt, images_variant_trainval.txt, images_variant_test.txt}} "
        "(torchvision.datasets.FGVCAircraft layout)",
        "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ (fgvc-aircraft-2013b.tar.gz)",
        f"100 variants; official trainval (6667) for training, official test (3333); {_VAL} (trainval)",
        _aircraft_records,
        lambda root: list(_aircraft(root, "test").classes),
    ),
    "flowers17": DatasetFormat(
        "flowers17",
        "{root}/flowers17/<class>/*.jpg or {root}/<class>/*.jpg (class folders, optionally under train/ val/ "
        "test/; the release's jpg/image_NNNN.jpg must first be sorted into 17 class folders, 80 images each)",
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/ (17flowers.tgz)",
        "split folders where present, else seeded stratified 50/25/25 (the proportions of the official 40/20/20)",
        _flowers17_records,
        lambda root: folder_classes(_flowers17_base(root)),
    ),
    "flowers102": DatasetFormat(
        "flowers102",
        "{root}/flowers-102/jpg/image_00001.jpg ..\n{root}/flowers-102/{{imagelabels.mat, setid.mat}} "
        "(torchvision.datasets.Flowers102 layout)",
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ (102flowers.tgz, imagelabels.mat, setid.mat)",
        "official train / val / test (1020 / 1020 / 6149) from setid.mat",
        _flowers102_records,
        _flowers102_classes,
    ),
    "ucmerced": DatasetFormat(
        "ucmerced",
        "{root}/UCMerced_LandUse/Images/<class>/*.tif (the release zip; or {root}/<class>/*.tif)" + _PRE_SPLIT,
        "http://weegee.vision.ucmerced.edu/datasets/landuse.html (UCMerced_LandUse.zip)",
        f"no official split: seeded stratified {UCMERCED_TEST_FRACTION:.0%} test; {_VAL}",
        *_or_pre_split("ucmerced", _ucmerced_records, lambda root: folder_classes(_ucmerced_base(root)),
                       lambda root: (root / "UCMerced_LandUse").is_dir() or (root / "Images").is_dir()),
    ),
    "dtd": DatasetFormat(
        "dtd",
        "{root}/dtd/dtd/images/<class>/*.jpg\n{root}/dtd/dtd/labels/{{train1.txt, val1.txt, test1.txt}} "
        "(torchvision.datasets.DTD layout: the release's dtd/ folder inside {root}/dtd/)" + _PRE_SPLIT,
        "https://www.robots.ox.ac.uk/~vgg/data/dtd/ (dtd-r1.0.1.tar.gz)",
        "official split 1: train1 / val1 / test1 (40 / 40 / 40 per class)",
        *_or_pre_split("dtd", _dtd_records, _dtd_classes, lambda root: (root / "dtd" / "dtd").is_dir()),
    ),
    **{f"domainnet_{d}": _domainnet(d) for d in DOMAINNET_DOMAINS},
    "pocus": DatasetFormat(
        "pocus",
        "{root}/pocus_videos/{{convex,linear}}/<Cov|Pneu|Reg|Vir>_*.mp4 and {root}/pocus_images/{{convex,linear}}/ "
        "(the covid19_ultrasound data/ folder), or extracted frames {root}/<fold or split>/<class>/<clip>_<n>.png",
        "https://github.com/jannisborn/covid19_ultrasound (data/pocus_videos, data/pocus_images)",
        f"fold {POCUS_FOLD} of {POCUS_NUM_FOLDS} patient-grouped folds as test, val by patient group from the others "
        "(medtransfer.data.pocus_datalist); grey frames",
        _pocus_records,
        _pocus_classes,
    ),
    "imagefolder": DatasetFormat(
        "imagefolder",
        "{root}/<class>/*.jpg (two or more class folders), optionally as {root}/train/<class>/ with test/ (and val/)",
        "the dataset's own page (any class-per-folder image set)",
        "split folders where present (val carved from train/ when absent), else seeded stratified 80/10/10",
        lambda root, split, seed: _folder_split(_imagefolder_base(root), split, seed, 0.1),
        lambda root: folder_classes(_imagefolder_base(root)),
    ),
}


FORMATS = tuple(NATURAL_FORMATS.values())
