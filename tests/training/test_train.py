import shutil

import numpy as np
import pytest
import tifffile
import torch

from unet.errors import (
    InputNotFound,
    InvalidImage,
    InvalidInputSize,
    InvalidParameter,
    OutputExists,
    UnsupportedInput,
)
from unet.network.checkpoint import load_checkpoint
from unet.predict.window import predict_array
from unet.tiling import Geometry
from unet.training.data import TileSampler, load_dataset, parse_class_map
from unet.training.synthetic import nuclei_image, write_nuclei_dataset
from unet.training.train import train

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
        (lambda r: make_pair(r, "a", IMAGE, MASK[:7]), InvalidImage, "7x8 but its image is 8x8"),
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
