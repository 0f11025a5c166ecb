"""Input images: decoding, folders and datasets, and the Lightning data module."""

from .datamodule import PAD_STATUS, FaceDataModule, RepeatedBatches, collate
from .folder import FolderImages, list_images
from .hf import HFImages
from .images import BadImageError, load_rgb, make_uid, square_resize

__all__ = ["PAD_STATUS", "BadImageError", "FaceDataModule", "FolderImages", "HFImages", "RepeatedBatches", "collate",
           "list_images", "load_rgb", "make_uid", "square_resize"]
