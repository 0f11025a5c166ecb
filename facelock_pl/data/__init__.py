"""Input images: decoding, folders and datasets, and the Lightning data module."""

from .datamodule import FaceDataModule, RepeatedBatches
from .folder import FolderImages, list_images
from .images import BadImageError, load_rgb, make_uid, square_resize

__all__ = ["BadImageError", "FaceDataModule", "FolderImages", "RepeatedBatches", "list_images", "load_rgb",
           "make_uid", "square_resize"]
