import numpy as np
import pytest

from unet.errors import InvalidInputSize, InvalidTileSize
from unet.tiling import (
    ChunkGrid,
    Geometry,
    axis_tiles,
    input_window,
    mirror_pad,
    reflect_index,
    strip_order,
)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("before, after", [(0, 0), (1, 1), (3, 7), (20, 13), (92, 95)])
def test_reflect_index_matches_numpy_pad_reflect(n, before, after):
    values = np.arange(n)
    expected = np.pad(values, (before, after), mode="reflect")
    assert np.array_equal(values[reflect_index(-before, n + after, n)], expected)


def test_reflect_does_not_repeat_the_edge_pixel():
    # numpy "reflect" (the paper's mirroring), not "symmetric" (dask's boundary="reflect").
    assert reflect_index(-3, 7, 4).tolist() == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    assert reflect_index(-2, 3, 1).tolist() == [0, 0, 0, 0, 0]


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (4, 3), (7, 11)])
def test_mirror_pad_matches_numpy_on_2d_and_channels(shape, rng):
    image = rng.random((3, *shape)).astype(np.float32)
    padded = mirror_pad(image, before=(5, 2), after=(9, 4))
    expected = np.pad(image, ((0, 0), (5, 9), (2, 4)), mode="reflect")
    assert padded.dtype == np.float32
    assert np.array_equal(padded, expected)


def test_mirror_pad_of_an_empty_axis_is_refused():
    with pytest.raises(InvalidInputSize):
        mirror_pad(np.zeros((0, 3)), (1, 1), (1, 1))


def test_valid_sizes_depth4():
    g = Geometry(4)
    assert (g.halo, g.align, g.smallest_input) == (92, 16, 188)
    assert [n for n in range(180, 240) if g.is_valid(n)] == [188, 204, 220, 236]
    assert g.valid_at_least(1 + 184) == 188
    assert g.valid_at_least(205) == 220
    assert g.valid_at_most(219) == 204
    assert g.nearest_valid(500) == (492, 508)
    assert g.nearest_valid(10) == (188,)


def test_tile_size_must_be_valid_and_advance():
    g = Geometry(4)
    assert g.check_tile_size(572) == 572
    with pytest.raises(InvalidTileSize, match="492 or 508"):
        g.check_tile_size(500)
    # 188 is a valid input but keeps 4 output pixels, less than one pooling period.
    with pytest.raises(InvalidTileSize, match="204"):
        g.check_tile_size(188)


@pytest.mark.parametrize("length", [1, 2, 15, 16, 17, 100, 387, 388, 389, 1000, 1001])
@pytest.mark.parametrize("tile", [204, 220, 572])
def test_axis_tiles_cover_exactly_on_the_pooling_grid(length, tile):
    g = Geometry(4)
    tiles = axis_tiles(length, tile, g)
    assert all(o % 16 == 0 for o in tiles.origins)
    assert g.is_valid(tiles.tile) and tiles.tile <= tile
    assert tiles.keep == tiles.tile - 184
    covered = np.zeros(length, bool)
    previous_end = 0
    for o in tiles.origins:
        assert o <= previous_end, "gap between tiles"
        covered[o : o + tiles.keep] = True
        previous_end = o + tiles.keep
    assert covered.all()
    # The last tile reaches the end but starts less than one period past what it must.
    assert tiles.origins[-1] + tiles.keep >= length
    assert tiles.origins[-1] + tiles.keep - length < 16 or len(tiles.origins) == 1
    assert list(tiles.origins) == sorted(set(tiles.origins))


def test_axis_tiles_known_case():
    # 572 keeps 388 output pixels; stride 384 (a multiple of 16); last tile pulled back to 624.
    tiles = axis_tiles(1000, 572, Geometry(4))
    assert tiles.origins == (0, 384, 624)
    assert tiles.window == 624 + 572


def test_small_axis_gets_one_small_tile():
    tiles = axis_tiles(1, 572, Geometry(4))
    assert tiles.origins == (0,) and tiles.tile == 188 and tiles.keep == 4
    tiles = axis_tiles(37, 572, Geometry(4))
    assert tiles.origins == (0,) and tiles.tile == 236


def test_chunk_grid_ragged_edges():
    grid = ChunkGrid((5, 7), (2, 4))
    regions = grid.regions()
    assert grid.counts == (3, 2) and grid.total == len(regions) == 6
    assert regions[0] == (slice(0, 2), slice(0, 4))
    assert regions[-1] == grid.bounds((2, 1)) == (slice(4, 5), slice(4, 7))


def test_input_window_of_an_unaligned_chunk_inside_the_image():
    """Depth 1: align 2, halo 8, a 20-pixel tile keeps 4 output pixels."""
    geometry = Geometry(1)
    window = input_window(slice(3, 9), slice(10, 16), (40, 40), 20, geometry)
    # Rows 3..9 start off the grid: the output starts at row 2, offset 1, 7 rows; columns at 10.
    assert window.offset == (1, 0) and window.out_shape == (7, 6)
    # 7 rows take tiles at 0 and 4 (window 24), 6 columns at 0 and 2 (window 22); the window
    # starts a halo before the grid point: row 2 - 8 = -6 (6 rows mirrored), column 10 - 8 = 2.
    assert window.read_rows == slice(0, 18) and window.read_cols == slice(2, 24)
    assert window.pad_before == (6, 0) and window.pad_after == (0, 0)
    assert window.shape == (24, 22)
    assert window.centre(geometry.context) == (slice(9, 15), slice(8, 14))
    assert window.crop() == (slice(1, None), slice(0, None))


def test_input_window_mirrors_where_it_leaves_the_image_and_equals_np_pad():
    geometry = Geometry(1)
    image = np.arange(9 * 11).reshape(1, 9, 11)
    window = input_window(slice(0, 9), slice(0, 11), (9, 11), 20, geometry)
    assert window.offset == (0, 0) and window.pad_before == (8, 8)
    read = image[:, window.read_rows, window.read_cols]
    padded = mirror_pad(read, window.pad_before, window.pad_after)
    assert padded.shape[1:] == window.shape
    expected = np.pad(
        image, [(0, 0), (8, window.pad_after[0]), (8, window.pad_after[1])], "reflect"
    )
    np.testing.assert_array_equal(padded, expected)
    rows, cols = window.centre(geometry.context)
    np.testing.assert_array_equal(padded[:, rows, cols], image)


def test_input_window_refuses_a_region_outside_the_image():
    with pytest.raises(ValueError, match="outside the 8x8 image"):
        input_window(slice(4, 10), slice(0, 4), (8, 8), 20, Geometry(1))


@pytest.mark.parametrize("width", [1, 2, 4])
def test_strip_order_is_a_permutation_by_strips(width):
    indices = [(i, j) for i in range(3) for j in range(5)]
    order = strip_order(list(reversed(indices)), width)
    assert sorted(order) == indices
    strips = [j // width for _, j in order]
    assert strips == sorted(strips)
    assert order[:2] == ([(0, 0), (1, 0)] if width == 1 else [(0, 0), (0, 1)])
