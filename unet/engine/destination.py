"""Where a run writes its mask: a store of its own, or a label image inside the segmented image.

``unet segment IMAGE.zarr OUTPUT.zarr`` writes the mask as its own OME-Zarr label image;
``unet segment IMAGE.zarr --labels NAME`` writes it into the image, as OME-NGFF 0.5 lays labels
out::

    IMAGE.zarr/labels/zarr.json     {"ome": {"version": "0.5", "labels": ["NAME", ...]}}
    IMAGE.zarr/labels/NAME/         the label image: levels "0", "1", ... as many as the image's

Nothing else of the image is touched. Both forms record the image they label
(``image-label.source.image``: ``"../../"`` inside the image, a relative path or the URL
otherwise). Every decision about these places is taken here, so that other label images of a
run can be placed beside the mask the same way.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from unet.config import check_label_name
from unet.errors import InvalidParameter, UnsupportedInput
from unet.io.locations import is_url, resolve_location
from unet.io.omezarr import LABELS_GROUP


@dataclass(frozen=True)
class Destination:
    """Where a run writes its mask, and which image the mask labels.

    Attributes
    ----------
    image: the segmented image (resolved path or URL)
    mask: the mask's OME-Zarr label image group (resolved path or URL)
    label_name: the mask's name under ``image/labels/`` when it lives inside the image, else None
    """

    image: str
    mask: str
    label_name: str | None = None

    @classmethod
    def of(cls, input: str, output: str, labels: str | None = None) -> Destination:
        """The destination of a run of ``input`` into ``output`` (see :func:`mask_location`)."""
        image = resolve_location(input)
        if labels is None:
            return cls(image, resolve_location(output))
        expected = label_location(image, labels)
        if resolve_location(output) != expected:
            raise InvalidParameter(
                f"--labels {labels} writes the mask into {expected}, not {output}: "
                "give OUTPUT or --labels, not both"
            )
        return cls(image, expected, labels)

    @property
    def inside_image(self) -> bool:
        """Whether the mask is a label image inside the segmented image."""
        return self.label_name is not None

    @property
    def source_reference(self) -> str:
        """``image-label.source.image``: the image as seen from the mask's group.

        ``"../../"`` inside the image (NGFF's default); a relative path when both are local or
        in the same bucket of one object store; the image's URL otherwise.
        """
        if self.inside_image:
            return "../../"
        if not is_url(self.image) and not is_url(self.mask):
            return Path(os.path.relpath(self.image, self.mask)).as_posix()
        image_root, image_path = _split_url(self.image)
        mask_root, mask_path = _split_url(self.mask)
        if image_root is not None and image_root == mask_root:
            return posixpath.relpath(image_path, mask_path)
        return self.image


def label_location(image: str, name: str) -> str:
    """``image/labels/name``: where the label image ``name`` of the OME-Zarr ``image`` lives."""
    return f"{resolve_location(image).rstrip('/')}/{LABELS_GROUP}/{check_label_name(name)}"


def mask_location(input: str, output: str | None, labels: str | None) -> str:
    """The mask a run of ``input`` writes: ``output``, or with ``labels`` ``input/labels/NAME``.

    Raises
    ------
    InvalidParameter: neither or both of ``output`` and ``labels`` are given (an ``output``
        equal to the labels location counts as ``labels`` alone), or a bad label name
    UnsupportedInput: ``labels`` with an input that cannot hold labels (a folder of images, or
        an image file that is not Zarr)
    """
    if labels is None:
        if output is None:
            raise InvalidParameter(
                "no OUTPUT given: name the mask to write, or use --labels NAME to write it into "
                "the image (IMAGE.zarr/labels/NAME)"
            )
        return output
    from unet.io.folder import INGEST_SUFFIXES, is_zarr_store

    if not is_url(input):
        path = Path(input)
        if path.suffix.lower() in INGEST_SUFFIXES or (path.is_dir() and not is_zarr_store(path)):
            raise UnsupportedInput(
                f"--labels writes the mask into an OME-Zarr image, and {input} is not one: "
                "ingest it first (unet ingest) or give OUTPUT instead"
            )
    location = label_location(input, labels)
    if output is not None and resolve_location(output) != location:
        raise InvalidParameter(
            f"both OUTPUT {output} and --labels {labels} given: give OUTPUT for a mask of its "
            "own, or --labels alone to write it into the image"
        )
    return location


def _split_url(url: str) -> tuple[str | None, str]:
    """``("s3://bucket", "/path/in/bucket")`` of a URL; ``(None, path)`` of a local path."""
    if not is_url(url):
        return None, url
    scheme, rest = url.split("://", 1)
    bucket, _, path = rest.partition("/")
    return f"{scheme}://{bucket}", "/" + path
