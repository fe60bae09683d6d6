"""Instance labels of a whole mask, stitched exactly across chunks, out of core.

Every 4-connected object of each foreground class gets one id, unique across the image and the
classes, exactly as :func:`skimage.measure.label` (``connectivity=1``) of the whole mask per
class would give, up to a renumbering; objects crossing any number of chunks included.

- :mod:`.stitch`: labelling one chunk, the equivalences across chunk borders, the numbering
  (pure numpy)
- :mod:`.objects`: per-object measures and the Parquet object table
- :mod:`.tasks`: the two per-chunk task functions run in Dask workers
- :mod:`.stage`: the pass on the driver (:func:`instance_pass`)
- :mod:`.location`: where the instance image and the table go
"""

from __future__ import annotations

from unet.engine.instances.location import (
    instances_location,
    objects_location,
    recorded_instances,
    resolve_from,
)

__all__ = ["instances_location", "objects_location", "recorded_instances", "resolve_from"]
