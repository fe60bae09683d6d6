"""Exact overlap-tile U-Net segmentation of huge images.

Importing ``unet`` is cheap: torch, dask and prefect load where they are used.
"""

__version__ = "0.1.0"
