"""Images in Zarr and OME-Zarr: open, create, build pyramids, ingest TIFF/PNG/JPEG.

``unet.io.ingest.ingest`` is not re-exported here, so that ``unet.io.ingest`` stays the module.
Every submodule imports zarr, dask, tifffile and friends inside its functions, so importing
``unet.io`` stays cheap.
"""

from unet.io.omezarr import create_image, create_label_image, set_multiscales
from unet.io.pyramid import build_pyramid
from unet.io.source import ImageSource, open_image

__all__ = [
    "ImageSource",
    "build_pyramid",
    "create_image",
    "create_label_image",
    "open_image",
    "set_multiscales",
]
