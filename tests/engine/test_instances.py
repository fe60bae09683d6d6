"""Instance labels stitched across chunks: exact against skimage's labelling of the whole mask,
in memory (the pure core) and on Dask with Zarr stores (the pass, the run, resume)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from instances_data import (
    assert_same_objects,
    corners,
    diagonal_at_corner,
    noise,
    reference_instances,
    snake,
    spanning,
)

from unet.engine.instances.objects import ObjectStats, ObjectTable, chunk_stats
from unet.engine.instances.stitch import (
    Numbering,
    Stitcher,
    chunk_labels,
    label_chunk,
    region_values,
)
from unet.io.omezarr import create_label_image
from unet.tiling import ChunkGrid

NAMES = ["background", "a", "b", "c"]


def stitch_in_memory(mask: np.ndarray, chunks: tuple[int, int], seed: int = 0):
    """The pass without Dask or Zarr: chunks labelled in a random order, then relabelled."""
    grid = ChunkGrid(mask.shape, chunks)
    stitcher = Stitcher(grid.counts)
    order = np.random.default_rng(seed).permutation(grid.total)
    indices = grid.indices()
    for flat in order:
        rows, cols = grid.bounds(indices[flat])
        stitcher.add(chunk_labels(indices[flat], mask[rows, cols]))
    numbering = stitcher.numbering()
    instances = np.zeros(mask.shape, numbering.dtype)
    parts = []
    for flat, index in enumerate(indices):
        rows, cols = grid.bounds(index)
        block = mask[rows, cols]
        labels, count = label_chunk(block)
        ids = numbering.chunk_mapping(flat).lookup_table(count, numbering.dtype)
        instances[rows, cols] = ids[labels]
        values = region_values(labels, block, count)
        parts.append(chunk_stats(labels, count, values, ids, (rows.start, cols.start)))
    return instances, numbering, parts


CASES = {
    "snake over 5x5 chunks": (snake((40, 37)), (8, 8)),
    "pluses at chunk corners": (corners((48, 48), 16), (16, 16)),
    "squares meeting at a chunk corner": (diagonal_at_corner(8), (8, 8)),
    "one object over every chunk": (spanning((50, 44)), (8, 12)),
    "noise of 3 classes": (noise((37, 29), 4), (5, 7)),
    "1-pixel chunks": (noise((9, 7), 3, seed=1), (1, 1)),
    "one chunk larger than the image": (noise((10, 13), 4, seed=2), (16, 16)),
    "a 1-pixel-high image": (snake((1, 30)), (1, 4)),
}


@pytest.mark.parametrize("case", CASES)
def test_stitched_ids_equal_whole_image_labelling(case):
    mask, chunks = CASES[case]
    instances, numbering, _ = stitch_in_memory(mask, chunks)

    assert_same_objects(instances, mask)
    reference = reference_instances(mask)
    assert numbering.total == reference.max()
    assert np.array_equal(np.unique(instances[instances > 0]), np.arange(1, numbering.total + 1))
    again, _, _ = stitch_in_memory(mask, chunks, seed=1)
    assert np.array_equal(instances, again), "the numbering depends on the order chunks finish"


def objects_per_value(instances: np.ndarray, mask: np.ndarray) -> list[int]:
    return [len(np.unique(instances[mask == value])) for value in range(1, len(NAMES))]


def test_known_counts():
    instances, numbering, _ = stitch_in_memory(snake((40, 37)), (8, 8))
    assert numbering.total == 1 and len(numbering.spanning) == 1
    mask = diagonal_at_corner(8)
    instances, numbering, _ = stitch_in_memory(mask, (8, 8))
    assert objects_per_value(instances, mask) == [2, 1, 0]
    assert len(numbering.spanning) == 0
    mask = corners((48, 48), 16)
    instances, numbering, _ = stitch_in_memory(mask, (16, 16))
    assert objects_per_value(instances, mask) == [4, 12, 0]  # 4 inner chunk corners
    assert len(numbering.spanning) == 4


def test_ids_need_uint64_past_uint32():
    empty = np.zeros(0, np.int64)
    numbering = Numbering(empty, empty, empty, empty, empty, 2**32 - 1)
    assert numbering.dtype == np.uint32
    assert Numbering(empty, empty, empty, empty, empty, 2**32).dtype == np.uint64


def read_table(path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as parquet

    table = parquet.read_table(path).to_pydict()
    order = np.argsort(table["id"])
    return {name: np.asarray(column)[order] for name, column in table.items()}


def assert_table_matches(table, instances: np.ndarray, mask: np.ndarray, names=NAMES):
    """The table's rows are the regionprops of the instance image, one per id."""
    from skimage.measure import regionprops_table

    expected = regionprops_table(
        instances.astype(np.int64), properties=("label", "area", "centroid", "bbox")
    )
    assert np.array_equal(table["id"], expected["label"])
    assert np.array_equal(table["area_px"], expected["area"])
    np.testing.assert_allclose(table["centroid_row"], expected["centroid-0"])
    np.testing.assert_allclose(table["centroid_col"], expected["centroid-1"])
    for k, name in enumerate(["min_row", "min_col", "max_row", "max_col"]):
        assert np.array_equal(table[f"bbox_{name}"], expected[f"bbox-{k}"])
    first_pixel = [np.flatnonzero(instances.ravel() == i)[0] for i in table["id"]]
    assert np.array_equal(table["value"], mask.ravel()[first_pixel])
    assert list(table["class"]) == [names[v] for v in table["value"]]


@pytest.mark.parametrize("case", ["one object over every chunk", "noise of 3 classes"])
def test_object_table_matches_the_label_image(case, tmp_path):
    from unet.io.geo import Georeference

    mask, chunks = CASES[case]
    instances, numbering, parts = stitch_in_memory(mask, chunks)
    georeference = Georeference(None, (10.0, 0.0, 500.0, 0.0, -10.0, 9000.0))
    path = str(tmp_path / "objects.parquet")
    with ObjectTable(path, numbering.spanning, NAMES, numbering.dtype, georeference) as table:
        for part in parts[::-1]:
            table.add(part)
    assert table.rows == numbering.total
    assert table.objects_per_value[1:4].tolist() == objects_per_value(
        reference_instances(mask), mask
    )
    rows = read_table(path)
    assert_table_matches(rows, instances, mask)
    np.testing.assert_allclose(rows["area"], rows["area_px"] * 100.0)
    np.testing.assert_allclose(rows["centroid_x"], 500.0 + 10.0 * (rows["centroid_col"] + 0.5))
    np.testing.assert_allclose(rows["centroid_y"], 9000.0 - 10.0 * (rows["centroid_row"] + 0.5))
    assert not list(tmp_path.glob(".objects*")), "the staging file is left behind"


def test_table_of_a_failed_pass_is_not_written(tmp_path):
    path = tmp_path / "objects.parquet"
    with pytest.raises(RuntimeError), ObjectTable(str(path), np.zeros(0), NAMES, np.uint32):
        raise RuntimeError("killed")
    assert not path.exists() and not list(tmp_path.iterdir())


def test_stats_of_one_chunk_are_in_image_coordinates():
    block = np.array([[0, 1, 1], [2, 0, 1]], np.uint8)
    labels, count = label_chunk(block)
    ids = np.array([0, 7, 9], np.uint64)
    stats = chunk_stats(labels, count, region_values(labels, block, count), ids, (10, 20))
    assert isinstance(stats, ObjectStats) and len(stats) == 2
    assert stats.id.tolist() == [7, 9] and stats.value.tolist() == [1, 2]
    assert stats.area.tolist() == [3, 1]
    assert (stats.row_sum / stats.area).tolist() == [10 + 1 / 3, 11.0]
    assert [stats.min_row[0], stats.min_col[0], stats.max_row[0], stats.max_col[0]] == [
        10,
        21,
        12,
        23,
    ]


def write_mask(path, mask: np.ndarray, chunks: tuple[int, int]) -> str:
    from unet.io.omezarr import create_label_image

    colours = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]
    level0 = create_label_image(str(path), mask.shape, chunks, class_names=NAMES, colours=colours)
    level0[...] = mask
    return str(path)


@pytest.mark.parametrize("case", ["snake over 5x5 chunks", "pluses at chunk corners"])
def test_pass_on_dask_is_exact_and_its_table_matches(case, tmp_path, client):
    from unet.engine.instances.stage import label_instances

    mask, chunks = CASES[case]
    url = write_mask(tmp_path / "mask.zarr", mask, chunks)
    image, table = str(tmp_path / "mask-instances.zarr"), str(tmp_path / "objects.parquet")
    summary = label_instances(client, url, image, table, class_names=NAMES)

    instances = zarr.open_group(image, mode="r")["0"][...]
    assert instances.dtype == np.uint32 and instances.shape == mask.shape
    assert_same_objects(instances, mask)
    assert summary.objects == int(instances.max())
    assert list(summary.objects_per_value) == [0, *objects_per_value(instances, mask)]
    assert_table_matches(read_table(table), instances, mask)


def test_the_pass_sends_many_chunks_a_task_and_a_failing_one_ends_it(client):
    """A Dask task costs the driver a few ms of CPU, as much as labelling a 256^2 chunk: the
    pass's items travel several to a task (unet.engine.dispatch.run_items), every result
    comes back once, and a failing item still ends the pass with its own error."""
    import operator

    from distributed import get_task_stream

    from unet.engine.dispatch import run_items

    items = list(range(1, 301))
    with get_task_stream(client) as stream:
        results = list(run_items(client, 3, items, operator.mul))
    assert sorted(results) == [3 * item for item in items]
    tasks = [t for t in stream.data if "run_item_batch" in t["key"]]
    assert 1 < len(tasks) < len(items) // 4, len(tasks)
    with pytest.raises(ZeroDivisionError):
        list(run_items(client, 3, [*items, 0], operator.truediv))


def test_nodata_label_of_a_mask_is_no_object(tmp_path, client):
    from unet.engine.instances.stage import label_instances
    from unet.io.omezarr import MASK_NODATA

    mask = CASES["snake over 5x5 chunks"][0].copy()
    mask[:, : mask.shape[1] // 3] = MASK_NODATA
    path = tmp_path / "mask.zarr"
    colours = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]
    level0 = create_label_image(
        str(path),
        mask.shape,
        (8, 8),
        class_names=NAMES,
        colours=colours,
        nodata=MASK_NODATA,
        attributes={"unet": {"nodata": MASK_NODATA}},
    )
    level0[...] = mask
    image = str(tmp_path / "mask-instances.zarr")
    label_instances(client, str(path), image, str(tmp_path / "o.parquet"), class_names=NAMES)
    instances = zarr.open_group(image, mode="r")["0"][...]
    assert (instances[mask == MASK_NODATA] == 0).all()
    assert_same_objects(instances, np.where(mask == MASK_NODATA, 0, mask))


def test_instance_image_is_an_ome_label_image_with_a_pyramid(tmp_path, client):
    from ome_zarr_models.v05.image_label import ImageLabel

    from unet.engine.instances.stage import label_instances
    from unet.io.geo import Georeference, read_georeference
    from unet.io.source import open_image

    mask = spanning((1100, 300))
    url = write_mask(tmp_path / "mask.zarr", mask, (512, 512))
    image = str(tmp_path / "mask-instances.zarr")
    georeference = Georeference(None, (2.0, 0.0, 0.0, 0.0, -2.0, 0.0))
    label_instances(
        client,
        url,
        image,
        str(tmp_path / "o.parquet"),
        class_names=NAMES,
        georeference=georeference,
        digest="abc",
    )
    group = zarr.open_group(image, mode="r")
    ImageLabel.from_zarr(group)
    level0 = group["0"][...]
    assert_same_objects(level0, mask)
    paths = [d["path"] for d in group.attrs["ome"]["multiscales"][0]["datasets"]]
    assert paths == ["0", "1"] and np.array_equal(group["1"][...], level0[::2, ::2])
    assert group.attrs["unet"] == {"mask": "../mask.zarr", "digest": "abc"}
    assert read_georeference(open_image(image)).transform == georeference.transform


def segment_with_instances(folder, client, output, **hooks):
    """Segment ``folder/in.zarr`` (3 x 3 chunks of random pixels) with ``--instances``."""
    from testdata import write_checkpoint, write_image

    from unet.config import SegmentParameters
    from unet.engine.run import segment

    model = folder / "m.safetensors"
    if not model.exists():
        write_checkpoint(model, depth=2)
        write_image(folder / "in.zarr", (70, 90), (32, 32))
    parameters = SegmentParameters(model=str(model), tile_size=76, device="cpu", instances=True)
    return segment(str(folder / "in.zarr"), str(output), parameters, client=client, **hooks)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, client):
    """A run with instances that nothing interrupted: its folder and report."""
    folder = tmp_path_factory.mktemp("instances")
    return folder, segment_with_instances(folder, client, folder / "clean.zarr")


def test_a_run_with_instances_says_how_far_its_instance_pass_got(tmp_path, client, monkeypatch):
    """The pass after the last chunk is not silent: the run's progress lines say it began and
    follow its two rounds of chunks to 100 % (here from their start: no quiet seconds), after
    the chunks' own lines and before the result."""
    from unet.engine import progress

    monkeypatch.setattr(progress, "INSTANCE_QUIET", 0.0)
    lines: list[str] = []
    log = progress.ProgressLog("in", lines.append, heartbeat=False)
    report = segment_with_instances(tmp_path, client, tmp_path / "out.zarr", progress=log)
    log.finished(report)
    began = lines.index(next(line for line in lines if line.startswith("in: instances: ")))
    assert lines[began - 1].startswith("in: 9 of 9 chunks (100%)")  # the chunks' last line
    rounds = lines[began + 1 : -1]
    assert rounds[0].startswith("in: instances, round 1 of 2 (labelling): ")
    assert "in: instances, round 1 of 2 (labelling): 9 of 9 chunks (100%), about 0 s left" in rounds
    assert (
        rounds[-1] == "in: instances, round 2 of 2 (writing): 9 of 9 chunks (100%), about 0 s left"
    )
    assert lines[-1].startswith("in: done in ")


def test_segment_with_instances_reports_objects_and_records_them(clean_run, client):
    from unet.config import SegmentParameters
    from unet.engine.finished import finished_report

    folder, report = clean_run
    group = zarr.open_group(str(folder / "clean.zarr"), mode="r")
    mask = group["0"][...]
    instances = zarr.open_group(str(folder / "clean-instances.zarr"), mode="r")["0"][...]
    assert_same_objects(instances, mask)
    total = int(instances.max())
    assert total > 10, "a mask of a few objects would make the comparison weak"
    assert report.objects_per_class == {"foreground": total}
    assert report.to_dict()["objects_per_class"] == {"foreground": total}
    state = group.attrs["unet"]
    assert state["complete"] and state["fingerprint"]["parameters"]["instances"] is True
    assert state["instances"] == {
        "image": "../clean-instances.zarr",
        "table": "../clean-objects.parquet",
        "dtype": "uint32",
        "objects": total,
        "objects_per_class": {"foreground": total},
    }
    table = read_table(folder / "clean-objects.parquet")
    assert_table_matches(table, instances, mask, ["background", "foreground"])

    parameters = SegmentParameters(
        model=str(folder / "m.safetensors"), tile_size=76, device="cpu", instances=True
    )
    finished = finished_report(str(folder / "in.zarr"), str(folder / "clean.zarr"), parameters)
    assert finished is not None and finished.objects_per_class == {"foreground": total}


class Killed(Exception):
    """The run stops here, as if its process were killed."""


def test_killed_and_resumed_runs_give_identical_instances(clean_run, client, monkeypatch):
    """A run killed among the chunks, then again inside the instance pass, and resumed twice
    writes the same instance image and table as a run never interrupted."""
    folder, _ = clean_run
    output = folder / "out.zarr"

    def kill_after_two(done: int, total: int) -> None:
        if done >= 2:
            raise Killed

    with pytest.raises(Killed):
        segment_with_instances(folder, client, output, progress=kill_after_two)
    add, calls = ObjectTable.add, []

    def killed_in_the_pass(table, stats):
        calls.append(1)
        if len(calls) == 3:
            raise Killed
        add(table, stats)

    monkeypatch.setattr(ObjectTable, "add", killed_in_the_pass)
    with pytest.raises(Killed):
        segment_with_instances(folder, client, output)
    assert len(calls) == 3, "the second run must die inside the instance pass"
    state = zarr.open_group(str(output), mode="r").attrs["unet"]
    assert not state["complete"] and "instances" not in state
    assert not (folder / "out-objects.parquet").exists()
    monkeypatch.undo()

    report = segment_with_instances(folder, client, output)
    assert report.chunks_computed == 0 and report.chunks_resumed == report.chunks_total
    resumed = zarr.open_group(str(folder / "out-instances.zarr"), mode="r")["0"][...]
    clean = zarr.open_group(str(folder / "clean-instances.zarr"), mode="r")["0"][...]
    assert np.array_equal(resumed, clean)
    tables = [read_table(folder / f"{name}-objects.parquet") for name in ("out", "clean")]
    assert all(np.array_equal(tables[0][key], tables[1][key]) for key in tables[0])


def test_table_goes_to_a_url_through_fsspec():
    import fsspec
    import pyarrow.parquet as parquet

    mask, chunks = CASES["noise of 3 classes"]
    _, numbering, parts = stitch_in_memory(mask, chunks)
    url = "memory://instances-test/objects.parquet"
    with ObjectTable(url, numbering.spanning, NAMES, numbering.dtype) as table:
        for part in parts:
            table.add(part)
    with fsspec.open(url, "rb") as stored:
        assert parquet.read_table(stored).num_rows == numbering.total


def test_instances_of_a_mask_inside_its_image_are_a_listed_label_image(tmp_path, client):
    """``--labels NAME --instances``: the instance image is ``labels/NAME-instances``, listed
    beside the mask; the table goes beside the image, as the preview does."""
    from testdata import write_checkpoint

    from unet.config import SegmentParameters
    from unet.engine.run import segment
    from unet.io.omezarr import create_image

    model = write_checkpoint(tmp_path / "m.safetensors", depth=2)
    image = str(tmp_path / "image.zarr")
    level0 = create_image(image, (1, 70, 90), "uint8", (32, 32))
    level0[...] = np.random.default_rng(5).integers(0, 255, (1, 70, 90), dtype=np.uint8)
    parameters = SegmentParameters(
        model=model, tile_size=76, device="cpu", labels="cells", instances=True
    )
    report = segment(image, f"{image}/labels/cells", parameters, client=client)
    labels = zarr.open_group(f"{image}/labels", mode="r")
    assert labels.attrs["ome"]["labels"] == ["cells", "cells-instances"]
    mask = zarr.open_group(f"{image}/labels/cells", mode="r")["0"][...]
    group = zarr.open_group(f"{image}/labels/cells-instances", mode="r")
    assert group.attrs["ome"]["image-label"]["source"] == {"image": "../../"}
    instances = group["0"][...]
    assert_same_objects(instances, mask)
    assert report.objects_per_class == {"foreground": int(instances.max())}
    table = read_table(tmp_path / "image.cells-objects.parquet")
    assert_table_matches(table, instances, mask, ["background", "foreground"])
