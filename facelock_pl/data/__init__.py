"""Input images: decoding, folders and datasets, and the Lightning data module."""

from .datamodule import FaceDataModule, collate
from .feeder import SlotBoard, SlotFeeder
from .folder import FolderImages, list_images
from .hf import HFImages
from .images import BadImageError, load_rgb, make_uid, square_resize

__all__ = ["BadImageError", "FaceDataModule", "FolderImages", "HFImages", "SlotBoard", "SlotFeeder", "collate",
           "list_images", "load_rgb", "make_uid", "square_resize"]
