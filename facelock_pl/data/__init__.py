"""Input images: decoding, folders and datasets, and the Lightning data module."""

from .datamodule import FaceDataModule
from .feeder import ImageQueue, QueueFeed
from .folder import FolderImages, list_images
from .hf import HFImages
from .images import BadImageError, Photo, load_photo, load_rgb, make_uid
from .items import Decoding, ImageItem

__all__ = ["BadImageError", "Decoding", "FaceDataModule", "FolderImages", "HFImages", "ImageItem", "ImageQueue",
           "Photo", "QueueFeed", "list_images", "load_photo", "load_rgb", "make_uid"]
