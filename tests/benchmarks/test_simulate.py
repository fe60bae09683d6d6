"""The simulated device (``unet bench --simulate-device``): what it returns, where it is used."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from testdata import make_model

import unet.predict
from unet.bench.simulate import (
    SimulatedDevice,
    SimulatedDevicePlugin,
    parse_speed,
    simulated_device,
)


def call(step, tiles, labels, normalization=None):
    """``step`` on 72 x 72 tiles of a depth-2 model, whose output is 32 x 32; keeps 30 x 20."""
    crop = (slice(2, 2 + 30), slice(0, 20))
    return step(
        make_model(depth=2, num_classes=3),
        tiles,
        device=torch.device("cpu"),
        precision="fp32",
        crop=crop,
        labels=labels,
        normalization=normalization,
    )


@pytest.mark.parametrize("labels", [True, False])
def test_stand_in_returns_what_the_device_step_returns_in_shape_and_dtype(labels):
    tiles = np.random.default_rng(0).integers(0, 255, (3, 1, 72, 72)).astype(np.uint8)
    normalization = (np.float32([100.0]), np.float32([40.0]))
    real = call(unet.predict.device_step, tiles, labels, normalization)
    simulated = call(SimulatedDevice(math.inf), tiles, labels, normalization)
    assert simulated.shape == real.shape and simulated.dtype == real.dtype
    if labels:  # foreground like an image's: the tile above the normalization's mean
        assert simulated.any() and not simulated.all()


def test_stand_in_waits_for_the_device_time_of_the_batch_without_cpu():
    tiles = np.zeros((4, 1, 72, 72), np.float32)
    device = SimulatedDevice(0.024)  # 4 tiles x 600 pixels kept at 0.024 Mpx/s: 0.1 s
    wall, cpu = time.perf_counter(), time.process_time()
    call(device, tiles, labels=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert 0.1 <= wall < 0.5 and cpu < 0.05
    assert (device.batches, device.pixels) == (1, 4 * 30 * 20)


def test_processes_sharing_a_device_take_turns_on_it(tmp_path):
    """A stand-in of a shared lock file (one of several processes of one GPU) waits while
    another holder has the device: here this test, through a descriptor of its own, which flock
    tells apart as it does another process's."""
    import fcntl
    import os
    import threading

    lock = str(tmp_path / "gpu-0")
    held = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    threading.Timer(0.3, os.close, args=(held,)).start()  # the other process's batch ends
    tiles = np.zeros((4, 1, 72, 72), np.float32)
    started = time.perf_counter()
    call(SimulatedDevice(0.024, lock), tiles, labels=True)  # then 0.1 s of its own
    assert time.perf_counter() - started >= 0.39


def test_stand_in_is_used_only_where_installed():
    real = unet.predict.device_step
    with simulated_device(50.0) as stand_in:
        assert unet.predict.device_step is stand_in
    assert unet.predict.device_step is real


def test_plugin_installs_the_stand_in_in_the_workers_only(client):
    def current_step():
        import unet.predict

        return type(unet.predict.device_step).__name__

    real = unet.predict.device_step
    client.register_plugin(SimulatedDevicePlugin(100.0))
    try:
        assert set(client.run(current_step).values()) == {"SimulatedDevice"}
        assert unet.predict.device_step is real  # the driver keeps the real step
    finally:
        client.unregister_worker_plugin(SimulatedDevicePlugin.name)
    assert set(client.run(current_step).values()) == {"function"}


@pytest.mark.parametrize("text, expected", [("133", 133.0), ("0.5", 0.5), ("inf", math.inf)])
def test_speed_parses_numbers_and_inf(text, expected):
    assert parse_speed(text) == expected


@pytest.mark.parametrize("text", ["0", "-3", "nan"])
def test_speed_must_be_positive(text):
    with pytest.raises(ValueError, match="speed > 0"):
        parse_speed(text)
