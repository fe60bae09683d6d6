"""The three scenes: fluorescent nuclei, H&E-like tissue and a satellite-like rural scene."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from unet.errors import InvalidParameter
from unet.training.synthetic.noise import (
    gaussian_noise,
    hash_uniform,
    stream_key,
    to_uint8,
    value_noise,
    value_noise_at,
)
from unet.training.synthetic.objects import (
    CELL,
    PER_CELL,
    Blobs,
    cell_ids,
    cells_near,
    check_scene,
    cluster_blobs,
    draw,
    draw_nuclei,
)


@dataclass(frozen=True)
class NucleiScene:
    """Fluorescent nuclei: bright textured ellipses on a dark, uneven, noisy background.

    Nuclei form a clustered Poisson process: about half of them have neighbours placed so that
    they touch or nearly touch, which is what the weight map's border term is for. Density
    varies smoothly over the slide (crowded and sparse regions). The defaults draw crisp, bright
    nuclei; :meth:`varied` draws scenes as real microscopes show them (out of focus, dim, noisy,
    large or small nuclei), for training models that hold up on real images.

    Parameters
    ----------
    shape: (Y, X)
    seed: any non-negative integer
    density: mean nuclei per pixel
    radius: range of the nuclei's mean radius in pixels
    blur: standard deviation in pixels of the optical point-spread function
    gain: factor on the nuclei's brightness (55 to 200 at 1)
    background: lowest background level (it rises to twice that over a few hundred pixels)
    noise: factor on the shot and read noise
    texture: depth of the chromatin texture (brightness varies by +-texture/2 within a nucleus)
    """

    shape: tuple[int, int]
    seed: int = 0
    density: float = 1 / 700
    radius: tuple[float, float] = (5.0, 10.0)
    blur: float = 1.0
    gain: float = 1.0
    background: float = 14.0
    noise: float = 1.0
    texture: float = 0.6

    channels: ClassVar[int] = 1
    class_names: ClassVar[tuple[str, ...]] = ("background", "nucleus")
    instances: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_scene(self.shape, self.seed)
        if not (0 < self.radius[0] <= self.radius[1] <= 20):
            raise InvalidParameter(f"radius must satisfy 0 < low <= high <= 20, got {self.radius}")
        if not (0.3 <= self.blur <= 4 and 0 < self.gain <= 2 and self.background >= 0):
            raise InvalidParameter(
                f"need 0.3 <= blur <= 4, 0 < gain <= 2 and background >= 0, got blur "
                f"{self.blur}, gain {self.gain}, background {self.background}"
            )
        if self.noise < 0 or not 0 <= self.texture <= 1:
            raise InvalidParameter(
                f"need noise >= 0 and 0 <= texture <= 1, got {self.noise} and {self.texture}"
            )

    @classmethod
    def varied(cls, shape: tuple[int, int], seed: int = 0) -> NucleiScene:
        """A scene whose look is drawn from ``seed``: blur 0.8 to 2.6 pixels, gain 0.3 to 1.2
        (dim nuclei barely above the background), background 4 to 24, noise 0.6 to 2.5 times the
        default, chromatin texture 0.1 to 0.6, mean radii from 4-7 up to 7-16 pixels at a
        density that keeps the nuclei crowded or sparse alike."""
        rng = np.random.default_rng([seed, 0x5CE9E])
        low = rng.uniform(4.0, 7.0)
        high = min(low + rng.uniform(3.0, 9.0), 16.0)
        mean_radius = (low + high) / 2
        return cls(
            shape=shape,
            seed=seed,
            density=float(rng.uniform(0.6, 1.5) / 700 * (7.5 / mean_radius) ** 2),
            radius=(float(low), float(high)),
            blur=float(rng.uniform(0.8, 2.6)),
            gain=float(np.exp(rng.uniform(np.log(0.3), np.log(1.2)))),
            background=float(rng.uniform(4.0, 24.0)),
            noise=float(rng.uniform(0.6, 2.5)),
            texture=float(rng.uniform(0.1, 0.6)),
        )

    def render(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        blobs = cluster_blobs(
            self.shape, stream_key(self.seed, 0), rows, cols, self.density, self.radius
        )
        labels, brightness = draw_nuclei(blobs, self.shape, rows, cols, blur=self.blur)
        texture = (1.0 - self.texture / 2) + self.texture * value_noise(
            stream_key(self.seed, 1), rows, cols, 2.5
        )
        uneven = value_noise(stream_key(self.seed, 2), rows, cols, 300.0)
        background = self.background + self.background * uneven
        clean = background + self.gain * brightness * texture
        # Shot noise grows with the signal, read noise does not.
        noisy = clean + self.noise * gaussian_noise(stream_key(self.seed, 3), rows, cols) * np.sqrt(
            6.0 + 0.6 * clean
        )
        return to_uint8(noisy)[None], labels


@dataclass(frozen=True)
class TissueScene:
    """An H&E-like slide: tissue islands of pink, fibrous stroma with purple nuclei on white glass.

    Colours follow Beer-Lambert with the usual haematoxylin and eosin stain vectors. Labels are
    classes: 0 background (glass), 1 tissue, 2 nucleus. :meth:`varied` draws the staining, focus
    and noise from the seed, as slides from different labs and scanners differ.

    Parameters
    ----------
    haematoxylin, eosin: factors on the two stains' optical density
    blur: standard deviation in pixels of the nuclei's blur (focus)
    noise: standard deviation of the pixel noise
    """

    shape: tuple[int, int]
    seed: int = 0
    tissue_fraction: float = 0.5
    density: float = 1 / 260
    radius: tuple[float, float] = (3.0, 6.5)
    haematoxylin: float = 1.0
    eosin: float = 1.0
    blur: float = 0.8
    noise: float = 3.0

    channels: ClassVar[int] = 3
    class_names: ClassVar[tuple[str, ...]] = ("background", "tissue", "nucleus")
    instances: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_scene(self.shape, self.seed)
        if not 0 < self.tissue_fraction < 1:
            raise InvalidParameter(f"tissue_fraction must be in (0, 1), got {self.tissue_fraction}")
        if min(self.haematoxylin, self.eosin) <= 0 or not 0.3 <= self.blur <= 4 or self.noise < 0:
            raise InvalidParameter(
                "need stains > 0, 0.3 <= blur <= 4 and noise >= 0, got "
                f"{self.haematoxylin}, {self.eosin}, {self.blur}, {self.noise}"
            )

    @classmethod
    def varied(cls, shape: tuple[int, int], seed: int = 0) -> TissueScene:
        """A slide whose staining and focus are drawn from ``seed``: each stain 0.6 to 1.5 times
        the default, nuclei blur 0.6 to 2 pixels, noise 2 to 8, nuclei radii from 2.5-5 up to
        5-9 pixels."""
        rng = np.random.default_rng([seed, 0x7155E])
        low = rng.uniform(2.5, 5.0)
        return cls(
            shape=shape,
            seed=seed,
            radius=(float(low), float(low + rng.uniform(2.5, 4.0))),
            haematoxylin=float(rng.uniform(0.6, 1.5)),
            eosin=float(rng.uniform(0.6, 1.5)),
            blur=float(rng.uniform(0.6, 2.0)),
            noise=float(rng.uniform(2.0, 8.0)),
        )

    def _tissue_field(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Smooth field whose upper ``tissue_fraction`` is tissue, at points (float64)."""
        coarse = value_noise_at(stream_key(self.seed, 10), y, x, 900.0)
        return 0.8 * coarse + 0.2 * value_noise_at(stream_key(self.seed, 11), y, x, 120.0)

    def _threshold(self) -> float:
        """The field's ``1 - tissue_fraction`` quantile over a fixed sample of the whole slide
        (value noise is not uniform, so the level is measured, not assumed)."""
        sample = np.random.default_rng([stream_key(self.seed, 17)]).random((2, 4096))
        field = self._tissue_field(sample[0] * self.shape[0], sample[1] * self.shape[1])
        return float(np.quantile(field, 1 - self.tissue_fraction))

    def render(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        threshold = self._threshold()
        field = 0.8 * value_noise(stream_key(self.seed, 10), rows, cols, 900.0) + (
            0.2 * value_noise(stream_key(self.seed, 11), rows, cols, 120.0)
        )
        blobs = cluster_blobs(
            self.shape, stream_key(self.seed, 12), rows, cols, self.density, self.radius
        )
        blobs = blobs.take(self._tissue_field(blobs.y, blobs.x) > threshold + 0.01)
        nuclei, stain = draw_nuclei(blobs, self.shape, rows, cols, blur=self.blur)
        # Tissue fades in over a few pixels at its outline, as a cut section does.
        inside = np.clip((field - threshold) / 0.01, 0.0, 1.0)
        y = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None]
        x = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :]
        warp = 7.0 * value_noise(stream_key(self.seed, 13), rows, cols, 40.0)
        fibres = 0.5 + 0.5 * np.sin((0.8 * y + 0.6 * x) / 3.5 + warp)
        patchy = value_noise(stream_key(self.seed, 14), rows, cols, 25.0)
        eosin = self.eosin * inside * (0.25 + 0.25 * fibres * patchy + 0.15 * patchy)
        chromatin = 0.75 + 0.5 * value_noise(stream_key(self.seed, 15), rows, cols, 2.0)
        # Nucleus stain is an intensity in 0..200; 1/150 makes a dense nucleus dark purple.
        haematoxylin = self.haematoxylin * (inside * 0.04 + stain * chromatin / 150.0)
        optical_density = (
            haematoxylin[None] * np.array([0.65, 0.70, 0.29], np.float32)[:, None, None]
            + eosin[None] * np.array([0.07, 0.99, 0.11], np.float32)[:, None, None]
        )
        noise = gaussian_noise(stream_key(self.seed, 16), rows, cols)
        image = 245.0 * np.exp(-optical_density) + self.noise * noise[None]
        labels = np.where(nuclei > 0, 2, field > threshold).astype(np.int32)
        return to_uint8(image), labels


@dataclass(frozen=True)
class SatelliteScene:
    """A rural scene from above: field parcels with crop rows, meadows, lakes, winding roads and
    villages of rectangular buildings. Bands R, G, B, NIR; labels are classes
    0 other, 1 field, 2 road, 3 building, 4 water."""

    shape: tuple[int, int]
    seed: int = 0
    parcel: float = 180.0
    road_spacing: int = 700

    channels: ClassVar[int] = 4
    class_names: ClassVar[tuple[str, ...]] = ("other", "field", "road", "building", "water")
    instances: ClassVar[bool] = False

    # Reflectances (R, G, B, NIR) of crops, meadow, hedge, water, asphalt and two kinds of roof.
    _CROPS: ClassVar[np.ndarray] = np.array(
        [[70, 110, 50, 190], [95, 140, 60, 210], [175, 160, 95, 120], [140, 110, 80, 95]],
        np.float32,
    )
    _MEADOW: ClassVar[np.ndarray] = np.array([85, 125, 65, 170], np.float32)
    _HEDGE: ClassVar[np.ndarray] = np.array([45, 80, 40, 150], np.float32)
    _WATER: ClassVar[np.ndarray] = np.array([30, 55, 75, 12], np.float32)
    _ROAD: ClassVar[np.ndarray] = np.array([118, 118, 122, 95], np.float32)
    _ROOFS: ClassVar[np.ndarray] = np.array([[160, 75, 60, 80], [175, 175, 175, 110]], np.float32)

    def __post_init__(self) -> None:
        check_scene(self.shape, self.seed)
        if self.parcel < 20 or self.road_spacing < 200:
            raise InvalidParameter("parcel must be >= 20 and road_spacing >= 200 pixels")

    def render(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        image, labels = self._parcels(rows, cols)

        water = value_noise(stream_key(self.seed, 20), rows, cols, 700.0) > 0.78
        image[:, water] = self._WATER[:, None]
        labels[water] = 4

        houses = self._buildings(rows, cols)
        ids = draw(houses, rows, cols, shape="rectangle")[0]
        built = ids > 0
        red_roof = hash_uniform(stream_key(self.seed, 21), ids[built], 0) < 0.6
        image[:, built] = np.where(red_roof, self._ROOFS[0][:, None], self._ROOFS[1][:, None])
        labels[built] = 3

        road = self._roads(rows, cols)
        image[:, road] = self._ROAD[:, None]
        labels[road] = 2

        noise = gaussian_noise(stream_key(self.seed, 22), rows, cols)
        shade = 0.9 + 0.2 * value_noise(stream_key(self.seed, 23), rows, cols, 6.0)
        image = image * shade[None] + 4.0 * noise[None]
        return to_uint8(image), labels

    def _parcels(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """Voronoi parcels of a jittered grid; each a crop with rows or a meadow."""
        size = self.parcel
        y = np.arange(rows.start, rows.stop, dtype=np.float64)
        x = np.arange(cols.start, cols.stop, dtype=np.float64)
        gy, gx = np.floor(y / size).astype(np.int64), np.floor(x / size).astype(np.int64)
        best = np.full((y.size, x.size), np.inf)
        second = np.full_like(best, np.inf)
        owner_y = np.zeros(best.shape, np.int64)
        owner_x = np.zeros(best.shape, np.int64)
        key = stream_key(self.seed, 30)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                cy, cx = (gy + dy + 1)[:, None], (gx + dx + 1)[None, :]
                sy = (cy - 1 + hash_uniform(key, cy, cx)) * size
                sx = (cx - 1 + hash_uniform(key + 1, cy, cx)) * size
                dist = np.hypot(y[:, None] - sy, x[None, :] - sx)
                closer = dist < best
                second = np.where(closer, best, np.minimum(second, dist))
                best = np.where(closer, dist, best)
                owner_y = np.where(closer, cy, owner_y)
                owner_x = np.where(closer, cx, owner_x)
        kind = hash_uniform(key + 2, owner_y, owner_x)
        is_crop = kind < 0.65
        crop = np.minimum((kind / 0.65 * len(self._CROPS)).astype(np.int64), len(self._CROPS) - 1)
        angle = np.pi * hash_uniform(key + 3, owner_y, owner_x)
        period = 5.0 + 5.0 * hash_uniform(key + 4, owner_y, owner_x)
        furrows = np.sin(
            (np.cos(angle) * x[None, :] + np.sin(angle) * y[:, None]) * (2 * np.pi) / period
        )
        colour = np.where(
            is_crop[None], self._CROPS[crop].transpose(2, 0, 1), self._MEADOW[:, None, None]
        )
        colour = colour * (1.0 + 0.08 * furrows * is_crop)[None]
        hedge = (second - best) < 3.0
        colour[:, hedge] = self._HEDGE[:, None]
        labels = np.where(is_crop & ~hedge, 1, 0).astype(np.int32)
        return colour.astype(np.float32), labels

    def _roads(self, rows: slice, cols: slice) -> np.ndarray:
        """Two families of winding roads, one roughly horizontal, one roughly vertical."""
        road = np.zeros((rows.stop - rows.start, cols.stop - cols.start), bool)
        for family, (along, across) in enumerate(((cols, rows), (rows, cols))):
            key = stream_key(self.seed, 40 + family)
            t = np.arange(along.start, along.stop, dtype=np.float64)
            u = np.arange(across.start, across.stop, dtype=np.float64)
            spacing, amplitude, half_width = self.road_spacing, 40.0, 4.0
            reach = amplitude + half_width + 1
            first = int(np.floor((across.start - reach) / spacing))
            last = int(np.floor((across.stop + reach) / spacing))
            for stripe in range(max(first, 0), last + 1):
                params = hash_uniform(key, np.full(5, stripe), np.arange(5))
                if params[0] > 0.8:
                    continue
                centre = (stripe + 0.15 + 0.7 * params[1]) * spacing + amplitude * params[2] * (
                    np.sin(2 * np.pi * t / (800 + 1500 * params[3]) + 2 * np.pi * params[4])
                )
                on = np.abs(u[:, None] - centre[None, :]) < half_width
                road |= on if family == 0 else on.T
        return road

    def _buildings(self, rows: slice, cols: slice) -> Blobs:
        """Villages: rectangles packed where a smooth 'settlement' field is high, sharing a
        village-wide orientation, never in water."""
        key = stream_key(self.seed, 50)
        cells_y, cells_x = cells_near(self.shape, rows, cols, reach=16)  # half-diagonal 12.8
        parts = []
        for cy in cells_y:
            for cx in cells_x:
                centre_y, centre_x = (cy + 0.5) * CELL, (cx + 0.5) * CELL
                settlement = value_noise_at(key, np.array([centre_y]), np.array([centre_x]), 600.0)
                rate = max(0.0, float(settlement[0]) - 0.6) / 0.4 * CELL * CELL / 700
                rng = np.random.default_rng([key, cy, cx])
                count = min(int(rng.poisson(rate)), PER_CELL - 1)
                y = (cy + rng.random(count)) * CELL
                x = (cx + rng.random(count)) * CELL
                village = hash_uniform(key + 1, np.array([cy // 5]), np.array([cx // 5]))[0]
                parts.append(
                    Blobs(
                        ids=cell_ids(self.shape, cy, cx, count),
                        y=y,
                        x=x,
                        a=rng.uniform(4, 10, count),
                        b=rng.uniform(4, 8, count),
                        angle=np.pi * village + rng.normal(0, 0.05, count),
                        intensity=np.ones(count, np.float32),
                    )
                )
        houses = Blobs.concat(parts)
        wet = value_noise_at(stream_key(self.seed, 20), houses.y, houses.x, 700.0) > 0.75
        return houses.take(~wet)
