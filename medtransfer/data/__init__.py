"""Data readers (BUSI, MedMNIST, synthetic demo set), stratified splits and the grey-image loader."""

from medtransfer.data.busi import BUSI_CLASSES, read_busi
from medtransfer.data.medmnist import medmnist_records, read_medmnist
from medtransfer.data.paths import DATA_ENV, data_root, require_data
from medtransfer.data.splits import stratified_split
from medtransfer.data.synthetic import ensure_synthetic_busi, make_synthetic_busi
from medtransfer.data.synthetic_cxr import KERMANY_CLASSES, ensure_synthetic_kermany, make_synthetic_kermany
from medtransfer.data.transforms import LoadGreyImaged

__all__ = [
    "BUSI_CLASSES",
    "DATA_ENV",
    "KERMANY_CLASSES",
    "LoadGreyImaged",
    "data_root",
    "ensure_synthetic_busi",
    "ensure_synthetic_kermany",
    "make_synthetic_busi",
    "make_synthetic_kermany",
    "medmnist_records",
    "read_busi",
    "read_medmnist",
    "require_data",
    "stratified_split",
]
