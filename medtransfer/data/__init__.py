"""Data readers (BUSI, MedMNIST, natural images, POCUS, LiTS/MSD liver CT), synthetic demo sets, splits and loaders.

Classification data of every format is read through one registry (:mod:`medtransfer.data.registry`).
"""

from medtransfer.data.busi import BUSI_CLASSES, read_busi
from medtransfer.data.image_mode import IMAGE_MODES, has_colour, resolve_image_mode, trained_image_mode
from medtransfer.data.medmnist import MEDMNIST_CLASSES, medmnist_class_names, medmnist_records, read_medmnist
from medtransfer.data.paths import DATA_ENV, data_root, require_data
from medtransfer.data.registry import DatasetFormat, dataset_class_names, dataset_records, format_names, get_format
from medtransfer.data.segmentation import (
    AFFINE_TOLERANCE_MM,
    LITS_LABEL_MAP,
    SEGMENTATION_FORMATS,
    UNMAPPED_POLICIES,
    RemapLabelsd,
    check_pair,
    num_segmentation_classes,
    read_datalist_json,
    read_lits,
    read_msd_liver,
    segmentation_datalist,
    segmentation_file_list,
)
from medtransfer.data.splits import stratified_split
from medtransfer.data.synthetic import (
    ensure_synthetic_busi,
    ensure_synthetic_kermany,
    ensure_synthetic_lits,
    ensure_synthetic_pocus,
    ensure_synthetic_shapes,
    make_synthetic_busi,
    make_synthetic_kermany,
    make_synthetic_lits,
    make_synthetic_pocus,
    make_synthetic_shapes,
)
from medtransfer.data.synthetic.kermany import KERMANY_CLASSES
from medtransfer.data.transforms import LoadGreyImaged, LoadImageModed, LoadRGBd, RepeatGreyd, load_image

__all__ = [
    "AFFINE_TOLERANCE_MM",
    "BUSI_CLASSES",
    "DATA_ENV",
    "IMAGE_MODES",
    "KERMANY_CLASSES",
    "LITS_LABEL_MAP",
    "MEDMNIST_CLASSES",
    "SEGMENTATION_FORMATS",
    "UNMAPPED_POLICIES",
    "DatasetFormat",
    "LoadGreyImaged",
    "LoadImageModed",
    "LoadRGBd",
    "RemapLabelsd",
    "RepeatGreyd",
    "check_pair",
    "data_root",
    "dataset_class_names",
    "dataset_records",
    "ensure_synthetic_busi",
    "ensure_synthetic_kermany",
    "ensure_synthetic_lits",
    "ensure_synthetic_pocus",
    "ensure_synthetic_shapes",
    "format_names",
    "get_format",
    "has_colour",
    "load_image",
    "make_synthetic_busi",
    "make_synthetic_kermany",
    "make_synthetic_lits",
    "make_synthetic_pocus",
    "make_synthetic_shapes",
    "medmnist_class_names",
    "medmnist_records",
    "num_segmentation_classes",
    "read_busi",
    "read_datalist_json",
    "read_lits",
    "read_medmnist",
    "read_msd_liver",
    "require_data",
    "resolve_image_mode",
    "segmentation_datalist",
    "segmentation_file_list",
    "stratified_split",
    "trained_image_mode",
]
