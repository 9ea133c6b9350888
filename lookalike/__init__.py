"""lookalike — find visually similar products in a shop's catalogue."""

from .api import Hit, Index
from .build import BuildSummary, build_index
from .catalog import Catalog, read_catalog
from .embed import EmbedResult, embed_images
from .embedders import create_embedder, list_embedders
from .errors import (CatalogError, ImageError, IndexFormatError, LookalikeError,
                     UnknownItemError)
from .images import load_image

__all__ = [
    "Index", "Hit", "read_catalog", "Catalog", "build_index", "BuildSummary", "embed_images",
    "EmbedResult", "create_embedder", "list_embedders", "load_image", "LookalikeError",
    "CatalogError", "ImageError", "IndexFormatError", "UnknownItemError",
]
