import shutil

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F

from unet.errors import (
    ChannelMismatch,
    CheckpointError,
    FingerprintMismatch,
    InputNotFound,
    InvalidImage,
    InvalidInputSize,
    InvalidParameter,
    OutputExists,
    UnsupportedInput,
)
from unet.network.checkpoint import load_checkpoint
from unet.network.model import UNet
from unet.predict.window import predict_array
from unet.tiling import Geometry
from unet.training.data import load_dataset, parse_class_map
from unet.training.sampler import TileSampler
from unet.training.state import state_path
from unet.training.synthetic import nuclei_image, write_nuclei_dataset
from unet.training.train import train, validate, weighted_cross_entropy
from unet.training.weightmap import IGNORED

# A tiny network: depth 2 has a halo of 20, so a 60-pixel tile gives 20 output pixels.
TINY = dict(base_channels=4, depth=2, tile_size=60, batch_size=2, progress=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny convolutions gain nothing from threads, and on a shared CPU extra threads only wait.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_nuclei_dataset(tmp_path_factory.mktemp("data"), count=3, size=48, seed=0)


def test_a_few_steps_lower_the_loss(data_dir, tmp_path):
    result = train(
        data_dir, tmp_path / "m.safetensors", steps=40, optimizer="adam", lr=0.01, seed=1, **TINY
    )
    assert len(result.losses) == 40
    assert np.mean(result.losses[-8:]) < 0.8 * np.mean(result.losses[:8])
    assert result.final_loss == pytest.approx(np.mean(result.losses[-4:]))
    assert result.val_dice is not None and 0 <= result.val_dice <= 1
    assert len(result.val_images) == 1 and len(result.train_images) == 2


def test_train_checkpoint_predict_round_trip(data_dir, tmp_path):
    result = train(data_dir, tmp_path / "m.safetensors", steps=2, seed=0, **TINY)
    checkpoint = load_checkpoint(result.path)
    assert checkpoint.model.config == {
        "in_channels": 1,
        "num_classes": 2,
        "base_channels": 4,
        "depth": 2,
        "padding": "valid",
    }
    # Normalization is the training images' mean and std.
    training = [tifffile.imread(data_dir / "images" / f"{n}.tif") for n in result.train_images]
    pixels = np.concatenate([t.ravel() for t in training]).astype(np.float64)
    np.testing.assert_allclose(checkpoint.mean, [pixels.mean()], rtol=1e-5)
    np.testing.assert_allclose(checkpoint.std, [pixels.std()], rtol=1e-5)
    assert checkpoint.metadata["steps"] == 2 and checkpoint.metadata["optimizer"] == "sgd"
    assert checkpoint.metadata["input_range"] == [pixels.min(), pixels.max()]
    image = nuclei_image((30, 41), seed=99)[0]
    logits = predict_array(checkpoint.model, checkpoint.normalize(image[None]))
    assert logits.shape == (2, 30, 41) and np.isfinite(logits).all()


def test_same_seed_same_weights(data_dir, tmp_path):
    runs = [
        train(data_dir, tmp_path / f"{name}.safetensors", steps=3, seed=seed, **TINY)
        for name, seed in (("a", 4), ("b", 4), ("c", 5))
    ]
    a, b, c = (load_checkpoint(run.path).model.state_dict() for run in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0].losses == runs[1].losses
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_class_map_trains_several_classes(tmp_path):
    for folder in ("images", "masks"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    image, labels = nuclei_image((40, 40), seed=1)
    semantic = np.where(labels > 0, 1 + labels % 2, 0).astype(np.uint8) * 10  # values 0, 10, 20
    tifffile.imwrite(tmp_path / "data" / "images" / "a.tif", image)
    tifffile.imwrite(tmp_path / "data" / "masks" / "a.tif", semantic)
    result = train(
        tmp_path / "data",
        tmp_path / "m.safetensors",
        steps=1,
        class_map="10:1,20:2",
        class_names=["background", "even", "odd"],
        **TINY,
    )
    assert result.val_dice is None  # a single image: nothing held out
    checkpoint = load_checkpoint(result.path)
    assert checkpoint.model.num_classes == 3 and checkpoint.class_names[2] == "odd"
    assert checkpoint.metadata["class_map"] == [[10, 1], [20, 2]]


def test_tiles_are_windows_of_the_reflect_padded_image(data_dir):
    item = load_dataset(data_dir)[0]
    geometry = Geometry(depth=2)
    sampler = TileSampler([item], geometry, 60, np.random.default_rng(0))
    halo = geometry.halo
    padded = np.pad(item.image, ((0, 0), (halo, halo + 60), (halo, halo + 60)), mode="reflect")
    image, classes, weights = sampler.window(item, top=30, left=5)
    np.testing.assert_array_equal(image, padded[:, 30 : 30 + 60, 5 : 5 + 60])
    padded_classes = np.pad(item.classes, ((halo, halo + 60), (halo, halo + 60)), mode="reflect")
    np.testing.assert_array_equal(classes, padded_classes[30 : 30 + 60, 5 : 5 + 60])
    # An augmented sample keeps the label centre aligned with the image (flips and rotations
    # of an image that equals its labels).
    item.image = item.classes[None].astype(np.float32)
    sampler.elastic = False
    for _ in range(4):
        image, classes, weights = sampler.sample()
        assert image.shape == (1, 60, 60) and classes.shape == weights.shape == (20, 20)
        np.testing.assert_array_equal(image[0, halo:-halo, halo:-halo], classes)


def test_parse_class_map():
    assert parse_class_map("1:1, 2:1,3:2") == {1: 1, 2: 1, 3: 2}
    for bad in ("1-1", "", "a:1", "-1:2"):
        with pytest.raises(InvalidParameter):
            parse_class_map(bad)


def make_pair(root, name, image, mask, folder_image="images", folder_mask="masks"):
    (root / folder_image).mkdir(parents=True, exist_ok=True)
    (root / folder_mask).mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(root / folder_image / f"{name}.tif", image, photometric="minisblack")
    tifffile.imwrite(root / folder_mask / f"{name}.tif", mask)


IMAGE = np.zeros((8, 8), np.uint8)
MASK = np.zeros((8, 8), np.int32)
MASK[2:4, 2:4] = 1


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda r: None, InputNotFound, "does not exist"),
        (
            lambda r: (make_pair(r, "a", IMAGE, MASK), shutil.rmtree(r / "masks")),
            InputNotFound,
            "masks does not exist",
        ),
        (
            lambda r: (make_pair(r, "a", IMAGE, MASK), (r / "masks" / "a.tif").unlink()),
            InputNotFound,
            "empty",
        ),
        (
            lambda r: (
                make_pair(r, "a", IMAGE, MASK),
                make_pair(r, "b", IMAGE, MASK, "images", "other"),
            ),
            InvalidImage,
            "images without a mask: b",
        ),
        (
            lambda r: make_pair(r, "a", IMAGE, MASK[:7]),
            InvalidImage,
            r"8 × 7 px \(width × height\) but its image is 8 × 8 px",
        ),
        (lambda r: make_pair(r, "a", IMAGE, MASK.astype(np.float32)), InvalidImage, "float32"),
        (lambda r: make_pair(r, "a", IMAGE, -MASK), InvalidImage, "negative"),
        (lambda r: make_pair(r, "a", IMAGE, MASK * 0), InvalidImage, "nothing to learn"),
        (
            lambda r: (make_pair(r, "a", IMAGE, MASK), (r / "masks" / "notes.txt").write_text("")),
            UnsupportedInput,
            "notes.txt",
        ),
        (
            lambda r: (
                make_pair(r, "a", IMAGE, MASK),
                make_pair(r, "b", np.stack([IMAGE] * 3), MASK),
            ),
            InvalidImage,
            "channels",
        ),
    ],
    ids=[
        "no-dir",
        "no-masks-dir",
        "empty-masks",
        "unmatched",
        "shape",
        "float-mask",
        "negative",
        "all-empty",
        "unsupported",
        "channels",
    ],
)
def test_bad_data_is_refused_before_training(tmp_path, build, error, message):
    root = tmp_path / "data"
    build(root)
    with pytest.raises(error, match=message):
        train(root, tmp_path / "m.safetensors", **TINY)
    assert not (tmp_path / "m.safetensors").exists()


def test_class_map_must_cover_every_value(tmp_path):
    make_pair(tmp_path / "data", "a", IMAGE, MASK * 3)
    with pytest.raises(InvalidImage, match="class map"):
        train(tmp_path / "data", tmp_path / "m.safetensors", class_map="1:1", **TINY)


def test_bad_options(data_dir, tmp_path):
    with pytest.raises(InvalidInputSize, match="use 56 or 60"):
        train(data_dir, tmp_path / "m.safetensors", **{**TINY, "tile_size": 58})
    with pytest.raises(InvalidParameter, match="optimizer"):
        train(data_dir, tmp_path / "m.safetensors", optimizer="rmsprop", **TINY)
    with pytest.raises(InvalidParameter, match="val fraction"):
        train(data_dir, tmp_path / "m.safetensors", val_fraction=1.0, **TINY)
    (tmp_path / "exists.safetensors").write_bytes(b"")
    with pytest.raises(OutputExists):
        train(data_dir, tmp_path / "exists.safetensors", **TINY)


def test_bf16_autocast_trains_on_cpu(data_dir, tmp_path):
    result = train(data_dir, tmp_path / "m.safetensors", steps=1, precision="bf16", **TINY)
    assert np.isfinite(result.final_loss)
    assert load_checkpoint(result.path).metadata["precision"] == "bf16"


def weights_of(path):
    return load_checkpoint(path).model.state_dict()


def same_weights(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_records_how_it_was_trained(data_dir, tmp_path):
    result = train(data_dir, tmp_path / "m.safetensors", steps=4, val_every=2, seed=0, **TINY)
    metadata = load_checkpoint(result.path).metadata
    training = [tifffile.imread(data_dir / "images" / f"{n}.tif") for n in result.train_images]
    assert metadata["input_dtype"] == "uint8"
    assert metadata["input_range"] == [
        float(min(t.min() for t in training)),
        float(max(t.max() for t in training)),
    ]
    assert metadata["data"] == str(data_dir) and metadata["steps"] == 4
    assert metadata["history"]["step"] == [2, 4] and len(metadata["history"]["val_dice"]) == 2
    assert metadata["val_dice"] == metadata["history"]["val_dice"][-1] == result.val_dice
    assert metadata["annotated_pixels"] == 2 * 48 * 48 and metadata["init"] is None
    # The plot of loss and validation Dice lies beside the checkpoint.
    assert result.plot == tmp_path / "m.png"
    from PIL import Image

    with Image.open(result.plot) as plot:
        assert plot.format == "PNG" and plot.size == (800, 520)


def test_fine_tuning_starts_from_the_initial_model(data_dir, tmp_path):
    first = train(data_dir, tmp_path / "a.safetensors", steps=2, seed=0, **TINY)
    initial = load_checkpoint(first.path)
    # Other data: brighter images, so that their own normalization would differ.
    brighter = tmp_path / "brighter"
    shutil.copytree(data_dir, brighter)
    for path in (brighter / "images").iterdir():
        tifffile.imwrite(path, tifffile.imread(path) // 2 + 100)
    tuned = train(
        brighter,
        tmp_path / "b.safetensors",
        init=str(first.path),
        steps=2,
        seed=3,
        progress=False,
        batch_size=2,
        tile_size=60,
    )
    checkpoint = load_checkpoint(tuned.path)
    assert checkpoint.model.config == initial.model.config
    assert not same_weights(checkpoint.model.state_dict(), initial.model.state_dict())
    np.testing.assert_array_equal(checkpoint.mean, initial.mean)  # kept from the initial model
    np.testing.assert_array_equal(checkpoint.std, initial.std)
    assert checkpoint.metadata["lr"] == pytest.approx(0.001)  # a tenth of SGD's default
    assert checkpoint.metadata["init"] == str(first.path)
    assert checkpoint.metadata["init_digest"] == initial.digest
    renormalized = train(
        brighter,
        tmp_path / "c.safetensors",
        init=str(first.path),
        renormalize=True,
        steps=1,
        progress=False,
        tile_size=60,
    )
    assert load_checkpoint(renormalized.path).mean[0] > initial.mean[0] + 50


def test_fine_tuning_refuses_what_does_not_fit(data_dir, tmp_path):
    first = train(data_dir, tmp_path / "a.safetensors", steps=1, **TINY)
    init = str(first.path)
    with pytest.raises(InvalidParameter, match="--depth 3 differs .* drop --depth"):
        train(data_dir, tmp_path / "b.safetensors", init=init, depth=3, progress=False)
    rgb = tmp_path / "rgb"
    make_pair(rgb, "a", np.stack([IMAGE] * 3), MASK)
    with pytest.raises(ChannelMismatch, match="3 channels but the initial model"):
        train(rgb, tmp_path / "b.safetensors", init=init, progress=False)
    three = tmp_path / "three"
    make_pair(three, "a", IMAGE, MASK * 2)
    with pytest.raises(InvalidParameter, match="3 classes .* --class-map"):
        train(three, tmp_path / "b.safetensors", init=init, class_map="2:2", progress=False)
    with pytest.raises(CheckpointError, match="not found"):
        train(data_dir, tmp_path / "b.safetensors", init="no-such-model", progress=False)
    assert not (tmp_path / "b.safetensors").exists()


def test_the_bundled_model_can_be_fine_tuned(data_dir, tmp_path):
    result = train(
        data_dir,
        tmp_path / "m.safetensors",
        init="nuclei",
        steps=1,
        batch_size=1,
        tile_size=92,
        progress=False,
    )
    checkpoint = load_checkpoint(result.path)
    assert checkpoint.class_names == ["background", "nucleus"]
    assert checkpoint.model.config == load_checkpoint("nuclei").model.config


def test_ignored_pixels_add_nothing_to_the_loss():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, generator=generator)
    targets = torch.randint(0, 3, (2, 5, 6), generator=generator)
    weights = torch.rand(2, 5, 6, generator=generator)
    ignored = torch.rand(2, 5, 6, generator=generator) < 0.4
    targets[ignored] = IGNORED
    losses, gradients = [], []
    for fill in (0.0, 50.0):
        changed = logits.clone()
        changed[ignored.unsqueeze(1).expand_as(changed)] = fill
        changed.requires_grad_(True)
        loss = weighted_cross_entropy(changed, targets, weights)
        loss.backward()
        losses.append(loss.detach())
        gradients.append(changed.grad)
    assert torch.equal(losses[0], losses[1])
    assert torch.equal(gradients[0], gradients[1])
    assert not gradients[0][ignored.unsqueeze(1).expand_as(logits)].any()
    # With nothing ignored it is the plain weighted mean.
    full = torch.randint(0, 3, (2, 5, 6), generator=generator)
    expected = (F.cross_entropy(logits, full, reduction="none") * weights).mean()
    torch.testing.assert_close(weighted_cross_entropy(logits, full, weights), expected)


def test_training_never_sees_what_lies_far_from_the_annotations(tmp_path):
    image, labels = nuclei_image((160, 160), seed=1)
    mask = np.full((160, 160), 255, np.int32)
    mask[:32, :32] = labels[:32, :32]  # annotated: one corner; the rest is the ignore label
    changed = image.copy()
    changed[100:, 100:] = 255 - changed[100:, 100:]  # beyond any tile around the annotations
    runs = []
    for name, pixels in (("a", image), ("b", changed)):
        make_pair(tmp_path / name, "x", pixels, mask)
        runs.append(
            train(
                tmp_path / name,
                tmp_path / f"{name}.safetensors",
                steps=3,
                ignore_label=255,
                val_fraction=0,
                **TINY,
            )
        )
    assert same_weights(weights_of(runs[0].path), weights_of(runs[1].path))
    assert runs[0].losses == runs[1].losses
    assert load_checkpoint(runs[0].path).metadata["annotated_pixels"] == 32 * 32


def test_validation_scores_only_annotated_pixels():
    torch.manual_seed(0)
    model = UNet(1, 2, base_channels=4, depth=2).eval()
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 30, 34)).astype(np.float32)
    truth = rng.integers(0, 2, (30, 34))
    annotated = rng.random((30, 34)) < 0.5
    partial = np.where(annotated, truth, IGNORED)
    pred = predict_array(model, image).argmax(axis=0)[annotated]
    tp = np.sum((pred == 1) & (truth[annotated] == 1))
    expected = 2 * tp / (np.sum(pred == 1) + np.sum(truth[annotated] == 1))
    dice = validate(model, [(image, partial)], torch.device("cpu"), "fp32")
    assert dice == pytest.approx(expected)


def test_an_interrupted_run_resumes_to_the_same_weights(data_dir, tmp_path, monkeypatch):
    options = dict(steps=6, save_every=2, val_every=3, seed=2, **TINY)
    whole = train(data_dir, tmp_path / "whole.safetensors", **options)
    out = tmp_path / "parts.safetensors"
    original, calls = TileSampler.batch, []

    def interrupted(self, size):
        calls.append(size)
        if len(calls) == 5:
            raise KeyboardInterrupt  # as Ctrl-C (or a kill) during step 5
        return original(self, size)

    monkeypatch.setattr(TileSampler, "batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(data_dir, out, **options)
    monkeypatch.undo()
    assert not out.exists() and state_path(out).exists()
    with pytest.raises(FingerprintMismatch, match="other lr: .*--no-resume"):
        train(data_dir, out, **{**options, "lr": 0.02})
    resumed = train(data_dir, out, **options)
    assert resumed.resumed == [4] and not state_path(out).exists()
    assert same_weights(weights_of(whole.path), weights_of(out))
    assert resumed.losses == whole.losses
    metadata = load_checkpoint(out).metadata
    assert metadata["history"] == load_checkpoint(whole.path).metadata["history"]
    assert metadata["resumed"] == [4]
    # --no-resume starts over: the same run again, not resumed.
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(TileSampler, "batch", interrupted)
        calls.clear()
        train(data_dir, out, overwrite=True, **options)
    monkeypatch.undo()
    again = train(data_dir, out, overwrite=True, resume=False, **options)
    assert again.resumed == [] and same_weights(weights_of(whole.path), weights_of(out))


def test_the_command_line_fine_tunes_with_sparse_labels(tmp_path):
    from typer.testing import CliRunner

    from unet.cli import app

    image, labels = nuclei_image((64, 64), seed=1)
    make_pair(tmp_path / "data", "a", image, np.where(np.arange(64) < 32, labels, 255))
    out = tmp_path / "m.safetensors"
    args = ["train", str(tmp_path / "data"), "--out", str(out), "--init", "nuclei"]
    options = ["--ignore-label", "255", "--steps", "1", "--tile-size", "92", "--batch-size", "1"]
    result = CliRunner().invoke(app, [*args, *options])
    assert result.exit_code == 0, result.output
    assert f"plot {tmp_path / 'm.png'}" in result.output
    metadata = load_checkpoint(out).metadata
    assert metadata["init"] == "nuclei" and metadata["ignore_label"] == 255
    assert metadata["annotated_pixels"] == 64 * 32
    refused = CliRunner().invoke(app, [*args, "--depth", "2", "--overwrite"])
    assert isinstance(refused.exception, InvalidParameter)
    assert "--depth 2 differs from the initial model nuclei's 3" in str(refused.exception)
