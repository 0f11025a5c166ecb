"""Input images: decoding, folders and datasets, and the Lightning data module."""

from .datamodule import FaceDataModule
from .feeder import ImageQueue, QueueFeed
from .folder import FolderImages, list_images
from .hf import HFImages
from .images import BadImageError, load_rgb, make_uid, square_resize
from .items import ImageItem

__all__ = ["BadImageError", "FaceDataModule", "FolderImages", "HFImages", "ImageItem", "ImageQueue", "QueueFeed",
           "list_images", "load_rgb", "make_uid", "square_resize"]
