"""Read 3D CT segmentation sets (LiTS, MSD Task03_Liver, MONAI datalist JSON) and remap their label values.

Every image/label pair is checked from the NIfTI headers alone (shape and affine) when it is read, so a label
that belongs to another volume fails at once with both file names instead of as a crash or a silently
misaligned mask deep inside training. Splits are made per volume: all slices of a patient stay in one split.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, load_decathlon_datalist
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type

from medtransfer.data.imagefolder import natural_key
from medtransfer.data.splits import SPLIT_NAMES, stratified_split
from medtransfer.errors import DatasetError

__all__ = [
    "AFFINE_TOLERANCE_MM",
    "LITS_LABEL_MAP",
    "SEGMENTATION_FORMATS",
    "UNMAPPED_POLICIES",
    "RemapLabelsd",
    "check_pair",
    "num_segmentation_classes",
    "read_datalist_json",
    "read_lits",
    "read_msd_liver",
    "segmentation_datalist",
    "segmentation_file_list",
]

SEGMENTATION_FORMATS = ("lits", "msd", "datalist")
LITS_LABEL_MAP: dict[int, int] = {1: 1, 2: 2}  # LiTS: 0 background, 1 liver, 2 tumour
AFFINE_TOLERANCE_MM = 1e-3  # headers store float32: a few 1e-5 mm of rounding is the same geometry
UNMAPPED_POLICIES = ("error", "background")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
DATALIST_KEYS = {"train": "training", "val": "validation", "test": "test"}
DATALIST_NAMES = ("datalist.json", "dataset.json")  # looked for when --dataset_dir is a folder

_LITS_NAME = re.compile(r"(volume|segmentation)-(\d+)\.nii(\.gz)?", re.IGNORECASE)
_MSD_NAME = re.compile(r"liver_(\d+)\.nii(\.gz)?", re.IGNORECASE)
_SKIP_DIRS = ("__MACOSX",)


def _is_junk(path: Path) -> bool:
    """macOS resource forks (``._name``, shipped inside the MSD tarballs) and other hidden files."""
    return path.name.startswith(".")


def _nifti_stem(path: Path) -> str:
    """File name without ``.nii`` / ``.nii.gz`` (``volume-3.nii.gz`` -> ``volume-3``)."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES) and not _is_junk(path)


def _header(path: Path) -> Any:
    """The nibabel image with only its header read (the voxel data stays on disk)."""
    import nibabel as nib

    if not path.is_file():
        raise DatasetError(f"NIfTI file {path} not found; check the path in the data list")
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, ... on bad files
        raise DatasetError(f"cannot read the NIfTI header of {path}: {exc}; re-export it as .nii.gz") from exc


def check_pair(image: str | Path, label: str | Path, atol: float = AFFINE_TOLERANCE_MM) -> None:
    """Raise DatasetError naming both files when ``label`` cannot be the segmentation of ``image``.

    Reads only the two NIfTI headers (cheap even for 131 LiTS volumes). The spatial shapes (first three
    dimensions; a 4th channel dimension of multi-modal images is not compared) must be equal, and the
    voxel-to-world affines must agree within ``atol`` mm: a label drawn on another volume, a cropped or
    resampled image, or a mask saved with another orientation would otherwise be trained on misaligned.
    """
    image, label = Path(image), Path(label)
    img, lab = _header(image), _header(label)
    img_shape, lab_shape = tuple(img.shape[:3]), tuple(lab.shape[:3])
    if img_shape != lab_shape:
        raise DatasetError(
            f"label {label} has shape {lab_shape} but image {image} has shape {img_shape}: the label does not "
            "belong to that volume (cropped, resampled or mis-paired); pair each volume with its own segmentation"
        )
    diff = float(np.max(np.abs(np.asarray(img.affine, float) - np.asarray(lab.affine, float))))
    if not diff <= atol:  # also catches NaN affines
        raise DatasetError(
            f"label {label} and image {image} have the same shape {img_shape} but affines that differ by up to "
            f"{diff:.4g} mm (tolerance {atol:g} mm): the label does not belong to that volume or was saved with "
            f"another orientation/origin; re-save the label with the image's header.\nimage affine:\n"
            f"{np.round(img.affine, 4)}\nlabel affine:\n{np.round(lab.affine, 4)}"
        )


def _unique_by_number(files: Sequence[tuple[int, Path]], what: str) -> dict[int, Path]:
    """Number -> file, failing when two files claim one case (``volume-3.nii`` and ``volume-3.nii.gz``)."""
    found: dict[int, Path] = {}
    for number, path in files:
        if number in found:
            raise DatasetError(f"two {what} files for case {number}: {found[number]} and {path}; keep one of them")
        found[number] = path
    return found


def _pair_up(
    images: dict[int, Path], labels: dict[int, Path], image_name: str, label_name: str, record_id: str
) -> list[dict]:
    """Sorted records for numbered image/label files; an unpaired file is an error naming it and its partner.

    ``image_name``/``label_name`` say where the partner was expected, with ``{n}`` for the case number.
    """
    for number, path in sorted(images.items()):
        if number not in labels:
            raise DatasetError(
                f"volume {path} has no segmentation: expected {label_name.format(n=number)}; add it or remove the volume"
            )
    for number, path in sorted(labels.items()):
        if number not in images:
            raise DatasetError(
                f"segmentation {path} has no volume: expected {image_name.format(n=number)}; add it or remove the "
                "segmentation"
            )
    records = []
    for number in sorted(images):
        check_pair(images[number], labels[number])
        records.append({"image": str(images[number]), "label": str(labels[number]), "id": record_id.format(n=number)})
    return records


def read_lits(root: str | Path) -> list[dict]:
    """Records ``{"image", "label", "id": "volume-N"}`` of a LiTS-layout folder, sorted by N.

    ``root/volume-N.nii[.gz]`` with ``root/segmentation-N.nii[.gz]``, also one level down in any sub-folders
    (the LiTS download comes as ``Training Batch 1/`` and ``Training Batch 2/``). LiTS ``test-volume-N`` files
    have no segmentation and are not read here (use :func:`segmentation_file_list` for inference).
    """
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(
            f"LiTS folder {base} not found; pass the folder that holds volume-N.nii and segmentation-N.nii"
        )
    folders = [base] + sorted(
        (p for p in base.iterdir() if p.is_dir() and not _is_junk(p) and p.name not in _SKIP_DIRS),
        key=lambda p: natural_key(p.name),
    )
    volumes, segmentations = [], []
    for folder in folders:
        for path in folder.iterdir():
            match = _LITS_NAME.fullmatch(path.name)
            if match and path.is_file():
                kind, number = match.group(1).lower(), int(match.group(2))
                (volumes if kind == "volume" else segmentations).append((number, path))
    if not volumes and not segmentations:
        raise DatasetError(
            f"no LiTS files in {base} or its sub-folders: expected volume-N.nii[.gz] with segmentation-N.nii[.gz] "
            "(N = 0, 1, ...); for other names use --dataset_format datalist with a JSON list"
        )
    images = _unique_by_number(volumes, "volume")
    labels = _unique_by_number(segmentations, "segmentation")
    where = f"in {base} or one of its sub-folders"
    return _pair_up(
        images, labels, f"volume-{{n}}.nii[.gz] {where}", f"segmentation-{{n}}.nii[.gz] {where}", "volume-{n}"
    )


def read_msd_liver(root: str | Path) -> list[dict]:
    """Records ``{"image", "label", "id": "liver_N"}`` of the Medical Segmentation Decathlon Task03_Liver layout.

    ``root/imagesTr/liver_N.nii.gz`` with ``root/labelsTr/liver_N.nii.gz``; ``root`` may also be the folder that
    holds ``Task03_Liver/``. The macOS ``._liver_N.nii.gz`` files inside the MSD tarball are skipped, and so is
    ``imagesTs/`` (no labels).
    """
    base = Path(root)
    if not (base / "imagesTr").is_dir() and (base / "Task03_Liver" / "imagesTr").is_dir():
        base = base / "Task03_Liver"
    image_dir, label_dir = base / "imagesTr", base / "labelsTr"
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DatasetError(
                f"MSD folder {folder} not found; pass the Task03_Liver folder that holds imagesTr/liver_N.nii.gz "
                "and labelsTr/liver_N.nii.gz"
            )

    def numbered(folder: Path) -> list[tuple[int, Path]]:
        found = []
        for path in folder.iterdir():
            match = _MSD_NAME.fullmatch(path.name)
            if match and path.is_file() and not _is_junk(path):
                found.append((int(match.group(1)), path))
        return found

    images = _unique_by_number(numbered(image_dir), "image")
    labels = _unique_by_number(numbered(label_dir), "label")
    if not images and not labels:
        raise DatasetError(
            f"no MSD liver files in {image_dir} or {label_dir}: expected imagesTr/liver_N.nii.gz with "
            "labelsTr/liver_N.nii.gz"
        )
    return _pair_up(
        images, labels, str(image_dir / "liver_{n}.nii.gz"), str(label_dir / "liver_{n}.nii.gz"), "liver_{n}"
    )


def _datalist_path(path: str | Path) -> Path:
    """The JSON itself, or ``datalist.json`` / ``dataset.json`` inside a folder."""
    path = Path(path)
    if path.is_dir():
        for name in DATALIST_NAMES:
            if (path / name).is_file():
                return path / name
        raise DatasetError(f"{path} holds no {' or '.join(DATALIST_NAMES)}; pass the datalist JSON file itself")
    if not path.is_file():
        raise DatasetError(
            f"datalist JSON {path} not found; write one like "
            '{"training": [{"image": "ct.nii.gz", "label": "seg.nii.gz"}], "validation": [...], "test": [...]}'
        )
    return path


def read_datalist_json(path: str | Path, split: str) -> list[dict]:
    """Records of one split of a MONAI/MSD datalist JSON (paths relative to the JSON's folder).

    ``split`` is train, val or test (-> the JSON keys "training", "validation", "test"); the raw key names
    are accepted too. Every record gets an ``id`` (its image file name without extension) unless the JSON gives
    one, and every image/label pair is checked with :func:`check_pair`. "test" entries may omit the label.
    """
    json_path = _datalist_path(path)
    key = DATALIST_KEYS.get(split, split)
    if key not in DATALIST_KEYS.values():
        raise DatasetError(f"split must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")
    try:
        content = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read datalist JSON {json_path}: {exc}; fix the JSON syntax") from exc
    if not isinstance(content, dict) or key not in content:
        present = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise DatasetError(
            f'datalist {json_path} has no "{key}" list (split {split!r}; it has {present}); add a "{key}" list of '
            '{"image": ..., "label": ...} entries'
        )
    entries = content[key]
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f'"{key}" in datalist {json_path} is empty or not a list; list at least one image there')
    try:
        records = load_decathlon_datalist(json_path, is_segmentation=True, data_list_key=key)
    except (TypeError, ValueError, KeyError) as exc:
        raise DatasetError(f'cannot read "{key}" of datalist {json_path}: {exc}') from exc
    for i, record in enumerate(records):
        if "image" not in record or not isinstance(record["image"], str):
            raise DatasetError(f'entry {i} of "{key}" in {json_path} needs an "image" path, got {record!r}')
        if "label" not in record and key != "test":
            raise DatasetError(f'entry {i} of "{key}" in {json_path} ({record["image"]}) has no "label" path')
        for field in ("image", "label"):
            if field in record and not Path(record[field]).is_file():
                raise DatasetError(
                    f'{field} {record[field]} (entry {i} of "{key}" in {json_path}) not found; paths are relative '
                    "to the JSON's folder"
                )
        if "label" in record:
            check_pair(record["image"], record["label"])
        record.setdefault("id", _nifti_stem(Path(record["image"])))
    return records


def segmentation_datalist(
    dataset_dir: str | Path,
    dataset_format: str = "lits",
    split: str = "train",
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> list[dict]:
    """Records ``{"image", "label", "id"}`` of one split of a segmentation set.

    ``lits`` and ``msd`` get a seeded split by volume (every volume in exactly one split, the same seed always
    giving the same split); ``datalist`` takes the split named in the JSON (``dataset_dir`` is the JSON file or
    a folder holding ``datalist.json``), and ``seed``/``fractions`` are unused.
    """
    if dataset_format not in SEGMENTATION_FORMATS:
        raise DatasetError(f"dataset_format must be one of {', '.join(SEGMENTATION_FORMATS)}, got {dataset_format!r}")
    if split not in SPLIT_NAMES:
        raise DatasetError(f"split must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")
    if dataset_format == "datalist":
        return read_datalist_json(dataset_dir, split)
    records = read_lits(dataset_dir) if dataset_format == "lits" else read_msd_liver(dataset_dir)
    needed = sum(1 for f in fractions if f > 0)
    if len(records) < needed:
        raise DatasetError(
            f"{dataset_dir} holds {len(records)} volume(s) but a train/val/test split needs at least {needed}; "
            "add volumes, or use --dataset_format datalist with a JSON that names the training, validation and "
            "test files explicitly (one volume may appear in several lists there)"
        )
    idx = stratified_split([0] * len(records), fractions=fractions, seed=seed)[split]
    return [records[i] for i in idx]


def _is_label_file(path: Path, root: Path) -> bool:
    """LiTS ``segmentation-N`` files and anything under an MSD ``labelsTr``/``labelsTs`` folder are ground truth."""
    if _LITS_NAME.fullmatch(path.name) and path.name.lower().startswith("segmentation"):
        return True
    return any(part.lower() in ("labelstr", "labelsts") for part in path.relative_to(root).parts[:-1])


def segmentation_file_list(input_dir: str | Path) -> list[dict]:
    """Records ``{"image", "id"}`` for inference: every ``*.nii`` / ``*.nii.gz`` under a folder, or one file.

    Ground-truth files of the LiTS and MSD layouts (``segmentation-N``, ``labelsTr/``) are left out, so a dataset
    folder can be passed as it is. Ids are the file names without extension, so outputs can be named after their
    inputs; two files with the same name in different sub-folders would overwrite each other's outputs and are an
    error.
    """
    path = Path(input_dir)
    if path.is_file():
        if not _is_nifti(path):
            raise DatasetError(f"{path} is not a NIfTI file (.nii or .nii.gz); convert it or pass a folder")
        files = [path]
    elif path.is_dir():
        files = [
            p
            for p in path.rglob("*")
            if _is_nifti(p)
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
            and not _is_label_file(p, path)
        ]
        files.sort(key=lambda p: natural_key(str(p.relative_to(path))))
        if not files:
            raise DatasetError(
                f"no .nii or .nii.gz files under {path}; pass the folder (or file) holding the CT volumes"
            )
    else:
        raise DatasetError(f"input {path} not found; pass a .nii/.nii.gz file or a folder of them")
    records: list[dict] = []
    seen: dict[str, Path] = {}
    for file in files:
        name = _nifti_stem(file)
        if name in seen:
            raise DatasetError(
                f"{seen[name]} and {file} have the same name, so their outputs would collide; rename one or "
                "run them separately"
            )
        seen[name] = file
        records.append({"image": str(file), "id": name})
    return records


def _normalise_label_map(label_map: Mapping[Any, Any]) -> dict[int, int]:
    """Int source -> int target; keys and values may be strings ("5") because they come from JSON or the CLI."""
    if not isinstance(label_map, Mapping) or not label_map:
        raise DatasetError(f"label_map must be a non-empty mapping of source -> target label, got {label_map!r}")
    result: dict[int, int] = {}
    for source, target in label_map.items():
        try:
            s, t = int(str(source).strip()), int(str(target).strip())
        except ValueError as exc:
            raise DatasetError(
                f"label_map entry {source!r}: {target!r} is not a whole number mapping; e.g. "
                '--label_map \'{"1": 1, "2": 2}\''
            ) from exc
        if t < 0:
            raise DatasetError(
                f"label_map target {t} (for source {s}) is negative; targets are class indices 0, 1, ..."
            )
        if s in result and result[s] != t:
            raise DatasetError(f"label_map maps source {s} twice ({result[s]} and {t}); keep one entry")
        result[s] = t
    result.setdefault(0, 0)
    return dict(sorted(result.items()))


def num_segmentation_classes(label_map: Mapping[Any, Any]) -> int:
    """Output channels of a network trained on labels remapped by ``label_map``: 1 + the largest target."""
    return 1 + max(_normalise_label_map(label_map).values())


def _format_values(values: Sequence[float], limit: int) -> str:
    """``0, 1, 5 ...``: whole numbers without ``.0``, at most ``limit`` of them."""
    shown = [str(int(v)) if float(v).is_integer() else f"{v:g}" for v in values[:limit]]
    return ", ".join(shown) + (" ..." if len(values) > limit else "")


def _present_values(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(sorted distinct values, long index tensor or None): O(n) via bincount when labels are small ints."""
    if t.numel() == 0:
        return t.new_empty(0), None
    integral = not t.is_floating_point() or bool(torch.equal(t, torch.round(t)))
    if integral and t.dtype != torch.bool:
        lo, hi = int(t.min()), int(t.max())
        if lo >= 0 and hi < 65536:
            idx = t.long()
            counts = torch.bincount(idx.reshape(-1), minlength=hi + 1)
            return torch.nonzero(counts).reshape(-1), idx
    return torch.unique(t), None


class RemapLabelsd(MapTransform):
    """Map label values through ``label_map`` (source -> target; 0 -> 0 unless given) so that each dataset's own
    label numbering becomes the model's class indices (LiTS ``{1: 1, 2: 2}``; a 42-organ map's liver ``{5: 1}``).

    Values missing from the map are an error by default (``unmapped="error"``), naming the file (from the
    MetaTensor's ``filename_or_obj``) and the unexpected values: a silently wrong mapping would train on wrong
    classes. ``unmapped="background"`` sets them to 0 instead. The output keeps the input's type (MetaTensor,
    torch tensor or numpy array), dtype, device and metadata.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_map: Mapping[Any, Any] | None = None,
        unmapped: str = "error",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if unmapped not in UNMAPPED_POLICIES:
            raise DatasetError(f"unmapped must be one of {', '.join(UNMAPPED_POLICIES)}, got {unmapped!r}")
        self.label_map = _normalise_label_map(LITS_LABEL_MAP if label_map is None else label_map)
        self.unmapped = unmapped

    def _source_name(self, data: Mapping[Hashable, Any], key: Hashable, value: Any) -> str:
        meta = value.meta if isinstance(value, MetaTensor) else data.get(f"{key}_meta_dict", {})
        name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
        return f"label file {name}" if name else f"label {key!r} (no file name in its metadata)"

    def remap(self, value: Any, source: str = "label") -> Any:
        """Remap one array/tensor; ``source`` names it in the error message."""
        t = value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)
        present, idx = _present_values(t)
        present_list = present.tolist()
        unexpected = [v for v in present_list if v not in self.label_map]
        if unexpected and self.unmapped == "error":
            mapping = json.dumps({str(k): v for k, v in self.label_map.items() if k != 0})
            raise DatasetError(
                f"{source} holds label value(s) {_format_values(unexpected, 20)} that the label map {mapping} does not map "
                f"(values present: {_format_values(present_list, 30)}); map them with "
                f"--label_map (e.g. '{{\"5\": 1}}' to keep only label 5 as class 1) or pass --unmapped_labels "
                "background to treat them as background"
            )
        if idx is not None:  # lookup table over the values present: one pass however many labels
            lut = torch.zeros(int(present[-1]) + 1, dtype=t.dtype, device=t.device)
            for v in present_list:
                lut[int(v)] = self.label_map.get(int(v), 0)
            out = lut[idx]
        else:
            out = torch.zeros_like(t)
            for source_value, target in self.label_map.items():
                if target:
                    out[t == source_value] = target
        result, *_ = convert_to_dst_type(out, value)  # a MetaTensor input gets its metadata copied over
        return result

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.remap(d[key], self._source_name(d, key, d[key]))
        return d
