"""Datasets: image folders, IDX files (the MNIST family), arrays and torchvision datasets, behind one interface.

`resolve(data, split=...)` turns what `--data` accepts into a `Dataset`; `batches(dataset, spec)` streams it
prepared for a model. One unreadable file is reported (`dataset.skipped`) and skipped, never fatal.
"""

from .datasets import ArrayDataset, Batch, Dataset, ImageFolder, Subset, TorchvisionDataset, batches, match_channels
from .idx import read_idx, write_idx
from .images import load_image, pil_to_tensor, resize_crop
from .resolve import DATASET_NAMES, FASHION_MNIST_CLASSES, data_root, idx_dataset, npz_dataset, resolve

__all__ = [
    "ArrayDataset",
    "Batch",
    "DATASET_NAMES",
    "Dataset",
    "FASHION_MNIST_CLASSES",
    "ImageFolder",
    "Subset",
    "TorchvisionDataset",
    "batches",
    "data_root",
    "idx_dataset",
    "load_image",
    "match_channels",
    "npz_dataset",
    "pil_to_tensor",
    "read_idx",
    "resize_crop",
    "resolve",
    "write_idx",
]
