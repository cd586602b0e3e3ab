"""Data: the tutorial's bundle contract (dataloaders, class_names, dataset_sizes), image folders,
safe zips, the synthetic Shapes set, and images -> tensors through one preprocessing record.
"""

from .bundle import DataBundle
from .folders import from_image_folder
from .images import ImageError, Preprocessing, load_image
from .shapes import SHAPE_CLASSES, SHAPES_NORMALIZATION, ShapesDataset, shapes_bundle
from .zips import from_zip

__all__ = [
    "SHAPES_NORMALIZATION",
    "SHAPE_CLASSES",
    "DataBundle",
    "ImageError",
    "Preprocessing",
    "ShapesDataset",
    "from_image_folder",
    "from_zip",
    "load_image",
    "shapes_bundle",
]
