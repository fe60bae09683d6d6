"""Small georeferenced test data: a 4-band GeoTIFF scene and a 4-band model, for the GeoTIFF
ingest, segmentation and export tests."""

from __future__ import annotations

import numpy as np
from testdata import make_model

from unet.network.checkpoint import save_checkpoint
from unet.training.synthetic import SatelliteScene

EPSG = 32633
#: 10 m pixels, upper-left corner at (500000 E, 5000000 N).
TRANSFORM = (10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)
BANDS = ("B02", "B03", "B04", "B08")
NODATA = 0
CHUNK = 64
SHAPE = (4, 160, 200)


def write_geotiff(path, shape=SHAPE, *, descriptions=BANDS, seed=0):
    """A tiled uint16 GeoTIFF in EPSG:32633, nodata 0, whose top-left 64 x 64 block is all nodata.

    Returns the pixels, ``(C, Y, X)`` uint16.
    """
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(seed)
    pixels = rng.integers(1, 10_000, size=shape, dtype=np.uint16)
    pixels[:, :CHUNK, :CHUNK] = NODATA
    pixels[:, 100:104, 150:160] = NODATA  # a few nodata pixels inside valid data
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=shape[2],
        height=shape[1],
        count=shape[0],
        dtype="uint16",
        crs=f"EPSG:{EPSG}",
        transform=Affine(*TRANSFORM),
        nodata=NODATA,
        tiled=True,
        blockxsize=32,
        blockysize=32,
    ) as dataset:
        dataset.write(pixels)
        for band, name in enumerate(descriptions or (), start=1):
            dataset.set_band_description(band, name)
    return pixels


def write_model(path, in_channels=4, band_names=BANDS):
    model = make_model(in_channels=in_channels, num_classes=5, depth=2)
    metadata = {"band_names": list(band_names)} if band_names is not None else {}
    return str(
        save_checkpoint(
            path,
            model,
            mean=[3000.0] * in_channels,
            std=[2000.0] * in_channels,
            class_names=list(SatelliteScene.class_names),
            **metadata,
        )
    )
