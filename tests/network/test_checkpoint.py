import pickle

import numpy as np
import pytest
import torch
from testdata import make_model

from unet.errors import CheckpointError
from unet.network.checkpoint import load_checkpoint, save_checkpoint


def test_round_trip_is_bit_identical(tmp_path):
    model = make_model(in_channels=3, num_classes=3, depth=3)
    path = save_checkpoint(
        tmp_path / "m.safetensors",
        model,
        mean=[1.0, 2.0, 3.0],
        std=[4.0, 5.0, 6.0],
        class_names=["background", "nucleus", "stroma"],
        steps=12,
    )
    loaded = load_checkpoint(path)
    assert loaded.model.config == model.config
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert loaded.mean.tolist() == [1.0, 2.0, 3.0] and loaded.mean.dtype == np.float32
    assert loaded.std.tolist() == [4.0, 5.0, 6.0]
    assert loaded.class_names == ["background", "nucleus", "stroma"]
    assert loaded.metadata == {"steps": 12}
    assert len(loaded.digest) == 64
    x = torch.randn(1, 3, 108, 108)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded.model(x))


def test_normalize_uses_stored_mean_and_std(tmp_path):
    path = save_checkpoint(
        tmp_path / "m.safetensors", make_model(in_channels=2), mean=[10, 20], std=[2, 4]
    )
    raw = np.array([[[12, 14]], [[28, 20]]], dtype=np.uint16)
    assert load_checkpoint(path).normalize(raw).tolist() == [[[1.0, 2.0]], [[2.0, 0.0]]]


def test_pickle_is_refused(tmp_path):
    model = make_model()
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(raw)


def test_corrupt_file_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", make_model(), mean=0, std=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(path)
    path.write_bytes(b"garbage that is not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_other_architecture_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = save_checkpoint(tmp_path / "m.safetensors", make_model(), mean=0, std=1)
    other = make_model(base_channels=8).state_dict()
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file({k: v.contiguous() for k, v in other.items()}, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)


def test_missing_checkpoint_names_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_bad_std_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="std"):
        save_checkpoint(tmp_path / "m.safetensors", make_model(), mean=0, std=0)


def test_header_length_ending_in_0x80_is_not_mistaken_for_pickle(tmp_path):
    # A safetensors file starts with its header length; 0x0b80 bytes begins with byte 0x80.
    path = save_checkpoint(tmp_path / "m.safetensors", make_model(), mean=0, std=1)
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    target = ((length >> 8) + 1) << 8 | 0x80  # the first byte of the length is 0x80
    header = data[8 : 8 + length].rstrip()
    padded_header = header + b" " * (target - len(header))
    path.write_bytes(target.to_bytes(8, "little") + padded_header + data[8 + length :])
    assert path.read_bytes()[0] == 0x80
    assert load_checkpoint(path).model.config == make_model().config


def test_saved_checkpoint_is_readable_by_others(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "m.safetensors", make_model(), mean=0, std=1)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
