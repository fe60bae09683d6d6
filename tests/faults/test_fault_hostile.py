"""Hostile and careless inputs, second round: each is refused before anything is written, or
segmented correctly, and never gives a wrong mask without a word.

Nothing here starts a Dask cluster unless it segments (the module's one in-process cluster).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from testdata import assert_same_mask, reference_mask, run_main, write_checkpoint, write_image

from unet.config import SegmentParameters
from unet.engine.lock import lock_location
from unet.engine.run import segment
from unet.errors import InvalidParameter, OutputExists


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (links not followed) with its size and modification time."""
    return {
        str(path.relative_to(root)): (path.lstat().st_size, path.lstat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file() or path.is_symlink()
    }


def test_output_through_a_symlink_into_the_input_is_refused(tmp_path, model):
    write_image(tmp_path / "in.zarr", (8, 8), (4, 4))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link_to_in").symlink_to(tmp_path / "in.zarr", target_is_directory=True)
    (tmp_path / "out" / "mask.zarr").symlink_to(tmp_path / "in.zarr", target_is_directory=True)
    before = tree(tmp_path)
    for output in (tmp_path / "out" / "link_to_in" / "mask.zarr", tmp_path / "out" / "mask.zarr"):
        for overwrite in (False, True):
            parameters = SegmentParameters(model=model, overwrite=overwrite)
            with pytest.raises(InvalidParameter, match="inside the input|is the input") as caught:
                segment(str(tmp_path / "in.zarr"), str(output), parameters)
            assert "\n" not in str(caught.value) and "symbolic link" in str(caught.value)
            assert not Path(lock_location(str(output))).exists()
    assert tree(tmp_path) == before, "nothing written, the input unchanged"


def test_preview_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    from unet.results.preview import write_bytes

    precious = tmp_path / "in.zarr" / "zarr.json"
    precious.parent.mkdir()
    precious.write_text("{}")
    preview = tmp_path / "mask.preview.png"
    preview.symlink_to(precious)
    write_bytes(str(preview), b"png")
    assert precious.read_text() == "{}" and not preview.is_symlink()
    assert preview.read_bytes() == b"png" and sorted(p.name for p in tmp_path.iterdir()) == [
        "in.zarr",
        "mask.preview.png",
    ]


@pytest.fixture(scope="module")
def depth3_model(tmp_path_factory):
    """Depth 3, as the bundled model: its smallest tile (100) is above the smallest valid input
    side (92) that a one-pixel chunk's default tile rounded to."""
    return write_checkpoint(tmp_path_factory.mktemp("model3") / "m3.safetensors", depth=3)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (3, 2), (2, 40)])
def test_tiny_images_are_segmented_exactly(tmp_path, client, depth3_model, shape):
    from unet.network.checkpoint import load_checkpoint

    raw = write_image(tmp_path / "in.zarr", shape, shape, seed=sum(shape))
    report = segment(
        str(tmp_path / "in.zarr"),
        str(tmp_path / "out.zarr"),
        SegmentParameters(model=depth3_model, device="cpu"),
        client=client,
    )
    assert report.chunks_computed == 1
    tile = load_checkpoint(depth3_model).model.geometry.smallest_tile
    expected, near_tie = reference_mask(depth3_model, raw[None], tile)
    mask = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["0"][...]
    assert mask.shape == shape
    assert_same_mask(mask, expected, near_tie)


def test_overwrite_refuses_a_plain_file_and_replaces_an_empty_one(tmp_path, client, model):
    raw = write_image(tmp_path / "in.zarr", (8, 8), (8, 8))
    output = tmp_path / "out.zarr"
    output.write_text("not a store")
    parameters = SegmentParameters(model=model, device="cpu", overwrite=True)
    with pytest.raises(OutputExists, match="not a mask written by unet segment"):
        segment(str(tmp_path / "in.zarr"), str(output), parameters, client=client)
    assert output.read_text() == "not a store", "--overwrite replaces only what unet wrote"
    output.write_text("")  # an empty file holds nothing to lose
    segment(str(tmp_path / "in.zarr"), str(output), parameters, client=client)
    expected, near_tie = reference_mask(model, raw[None], 44)
    assert_same_mask(zarr.open_group(str(output), mode="r")["0"][...], expected, near_tie)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr", "out.zarr"]


BILLION_LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
deployments:
  - name: x
    flow: segment_image
    parameters: {input: a.zarr, output: b.zarr}
    tags: *i
"""

#: Loads argv[1] as unet serve does, in at most 1 GiB of address space over what imports take.
LOAD_PIPELINES = """
import resource, sys
from flows.pipelines import load_pipelines
from unet.errors import ConfigError
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + 2**30, resource.RLIM_INFINITY))
try:
    load_pipelines(sys.argv[1])
except ConfigError as error:
    print(error)
"""


def test_yaml_alias_bomb_is_refused_at_once_in_little_memory(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "pipelines.yaml"
    config.write_text(BILLION_LAUGHS)
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_PIPELINES, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    lines = loaded.stdout.splitlines()
    assert len(lines) == 1 and "aliases expand to more than" in lines[0], loaded.stdout


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a: &a [1, *a]\n", "refers to itself"),
        ("deployments: " + "[" * 600 + "]" * 600 + "\n", "nested too deeply"),
        ("# " + "x" * 1_000_001 + "\n", "more than a pipelines.yaml needs"),
    ],
    ids=["self-reference", "deep-nesting", "huge-file"],
)
def test_hostile_pipelines_files_are_one_line_config_errors(tmp_path, text, match):
    from flows.pipelines import load_pipelines
    from unet.errors import ConfigError

    config = tmp_path / "pipelines.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=match) as caught:
        load_pipelines(config)
    assert "\n" not in str(caught.value)


def test_yaml_anchors_within_reason_still_work(tmp_path):
    from flows.pipelines import load_pipelines

    config = tmp_path / "pipelines.yaml"
    config.write_text(
        "deployments:\n"
        "  - name: a\n"
        "    flow: segment_image\n"
        "    parameters: &common {model: nuclei, device: cpu, input: a.zarr, output: m.zarr}\n"
        "  - name: b\n"
        "    flow: segment_image\n"
        "    parameters: {<<: *common, input: b.zarr, output: n.zarr}\n"
    )
    deployments = load_pipelines(config).deployments
    assert [d.parameters.device for d in deployments] == ["cpu", "cpu"]
    assert Path(deployments[1].parameters.input) == tmp_path / "b.zarr"


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_tiff_is_one_line_exit_2_and_no_output(tmp_path, monkeypatch, capsys, damage):
    import tifffile

    pixels = np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", pixels, tile=(64, 64), compression="zlib")
    data = bytearray((tmp_path / "in.tif").read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[1000:3000] = bytes(2000)
    (tmp_path / "in.tif").write_bytes(bytes(data))
    code, lines = run_main(monkeypatch, capsys, "ingest", str(tmp_path / "in.tif"), "out.zarr")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "truncated or corrupt" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_non_numeric_tile_size_is_one_line_exit_2(monkeypatch, capsys):
    code, lines = run_main(
        monkeypatch, capsys, "segment", "in.zarr", "out.zarr", "--tile-size", "x"
    )
    assert code == 2 and len(lines) == 1 and "--tile-size" in lines[0], lines


def test_unwritable_report_is_refused_before_the_run(tmp_path, monkeypatch, capsys):
    import flows.runner

    def run_segment(*args, **kwargs):
        raise AssertionError("the run started although its report cannot be written")

    monkeypatch.setattr(flows.runner, "run_segment", run_segment)
    for report in (tmp_path / "missing" / "r.json", tmp_path):
        arguments = ["segment", "in.zarr", "out.zarr", "--report", str(report)]
        code, lines = run_main(monkeypatch, capsys, *arguments)
        assert code == 2 and len(lines) == 1 and "--report" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def write_model(path: Path, **metadata) -> str:
    """A depth-2 model normalizing with mean 100, std 40 (8-bit data), with ``metadata``."""
    from testdata import make_model

    from unet.network.checkpoint import save_checkpoint

    return str(save_checkpoint(path, make_model(depth=2), mean=100.0, std=40.0, **metadata))


@pytest.mark.parametrize("recorded", [False, True], ids=["mean-std-only", "recorded-range"])
def test_image_on_another_scale_is_refused_and_8_bit_values_in_uint16_work(
    tmp_path, client, recorded
):
    from unet.errors import RangeMismatch

    metadata = {"input_range": [0.0, 235.0], "input_dtype": "uint8"} if recorded else {}
    model = write_model(tmp_path / "m.safetensors", **metadata)
    raw = np.random.default_rng(5).integers(0, 236, (40, 40)).astype(np.uint16)
    for name, pixels in (("in8.zarr", raw.astype(np.uint8)), ("in16.zarr", raw)):
        zarr.create_array(str(tmp_path / name), data=pixels, chunks=(32, 32))
        segment(
            str(tmp_path / name),
            str(tmp_path / f"out-{name}"),
            SegmentParameters(model=model, device="cpu"),
            client=client,
        )
    masks = [
        zarr.open_group(str(tmp_path / f"out-{n}"))["0"][...] for n in ("in8.zarr", "in16.zarr")
    ]
    assert np.array_equal(*masks), "8-bit values in a uint16 array segment as before"

    zarr.create_array(str(tmp_path / "x257.zarr"), data=raw * 257, chunks=(32, 32))
    with pytest.raises(RangeMismatch, match="rescale the image") as caught:
        segment(
            str(tmp_path / "x257.zarr"),
            str(tmp_path / "out-x257.zarr"),
            SegmentParameters(model=model, device="cpu"),
            client=client,
        )
    assert "\n" not in str(caught.value) and "uint16 values" in str(caught.value)
    assert ("uint8 pixels in [0, 235]" in str(caught.value)) == recorded
    assert not (tmp_path / "out-x257.zarr").exists()


def test_float_image_scaled_to_0_1_is_refused_for_a_model_of_raw_intensities(tmp_path):
    from unet.errors import RangeMismatch

    model = write_model(tmp_path / "m.safetensors", input_range=[0.0, 255.0])
    pixels = np.random.default_rng(6).random((24, 24), dtype=np.float32)
    zarr.create_array(str(tmp_path / "in.zarr"), data=pixels, chunks=(24, 24))
    with pytest.raises(RangeMismatch, match=r"within \[0, 1\].*multiply"):
        segment(
            str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), SegmentParameters(model=model)
        )
    assert not (tmp_path / "out.zarr").exists()


def test_checkpoint_with_nan_weights_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    import torch
    from testdata import make_model

    from unet.errors import CheckpointError
    from unet.network.checkpoint import load_checkpoint, save_checkpoint

    model = make_model(depth=2)
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    path = save_checkpoint(tmp_path / "nan.safetensors", model, mean=100.0, std=40.0)
    with pytest.raises(CheckpointError, match="NaN or infinite") as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)
    write_image(tmp_path / "in.zarr", (8, 8), (8, 8))
    code, lines = run_main(
        monkeypatch, capsys, "segment", str(tmp_path / "in.zarr"), "out.zarr", "--model", str(path)
    )
    assert code == 2 and len(lines) == 1 and "NaN or infinite" in lines[0], lines


def test_missing_chunk_of_a_foreign_store_is_counted_and_warned(tmp_path, client, model, caplog):
    import logging

    raw = write_image(tmp_path / "in.zarr", (64, 64), (32, 32))
    (tmp_path / "in.zarr" / "c" / "1" / "0").unlink()  # lost, or left out as all fill value
    with caplog.at_level(logging.WARNING, logger="unet"):
        report = segment(
            str(tmp_path / "in.zarr"),
            str(tmp_path / "out.zarr"),
            SegmentParameters(model=model, device="cpu"),
            client=client,
        )
    assert report.chunks_computed == 4 and report.to_dict()["input_chunks_missing"] == 1
    assert "1 stored chunk(s) of" in caplog.text and "--overwrite" in caplog.text
    raw[32:, :32] = 0  # what was read
    expected, near_tie = reference_mask(model, raw[None], 72)
    assert_same_mask(zarr.open_group(str(tmp_path / "out.zarr"))["0"][...], expected, near_tie)


def test_cli_says_once_that_input_chunks_were_missing(monkeypatch, capsys):
    import flows.runner
    from unet.engine.report import SegmentReport

    report = SegmentReport("in.zarr", "out.zarr", (1, 64, 64), 4, 4, input_chunks_missing=2)
    monkeypatch.setattr(flows.runner, "run_segment", lambda *args, **kwargs: [report])
    code, lines = run_main(monkeypatch, capsys, "segment", "in.zarr", "out.zarr")
    assert code == 0 and len(lines) == 1, lines
    assert lines[0].startswith("warning: 2 stored chunk(s) of in.zarr are missing")


def test_missing_chunk_of_an_ingested_image_fails_the_chunks_that_need_it(tmp_path, client, model):
    from PIL import Image

    from unet.errors import ChunksFailed
    from unet.io.ingest import ingest

    pixels = np.random.default_rng(7).integers(1, 255, (96, 96), dtype=np.uint8)
    pixels[:32, 64:] = 0  # a chunk equal to the fill value: stored all the same
    Image.fromarray(pixels).save(tmp_path / "in.png")
    ingest(tmp_path / "in.png", str(tmp_path / "in.zarr"), chunks=(32, 32), progress=False)
    level0 = tmp_path / "in.zarr" / "0" / "c" / "0"
    assert sum(1 for path in level0.rglob("*") if path.is_file()) == 9, "every chunk is stored"
    lost = level0 / "2" / "2"
    kept = lost.read_bytes()
    lost.unlink()
    output = tmp_path / "out.zarr"
    parameters = SegmentParameters(model=model, device="cpu")
    with pytest.raises(ChunksFailed, match=r"input chunk \(2, 2\).*is missing") as caught:
        segment(str(tmp_path / "in.zarr"), str(output), parameters, client=client)
    failed = caught.value.report.chunks_failed
    assert [2, 2] in failed and [0, 0] not in failed and "\n" not in str(caught.value)
    lost.write_bytes(kept)  # restored: the rerun computes only those chunks
    report = segment(str(tmp_path / "in.zarr"), str(output), parameters, client=client)
    assert report.chunks_computed == len(failed) and report.input_chunks_missing == 0
    expected, near_tie = reference_mask(model, pixels[None], 72)
    assert_same_mask(zarr.open_group(str(output))["0"][...], expected, near_tie)
