"""Shared fixtures: small random models that run in milliseconds on a CPU."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    import torch

    torch.set_num_threads(2)


def make_model(seed: int = 0, **config):
    """A small random U-Net (base 4 channels unless given) with reproducible weights."""
    import torch

    from unet.network.model import UNet

    torch.manual_seed(seed)
    config.setdefault("base_channels", 4)
    model = UNet(**config).eval()
    # PyTorch's default init shrinks activations level by level, so the deep levels would barely
    # reach the logits and a misaligned pooling grid would hide below the tolerance. He init keeps
    # every level's signal, which makes the tiled == whole tests sensitive.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.uniform_(-0.1, 0.1)
            elif param.ndim == 4:
                torch.nn.init.kaiming_normal_(param, nonlinearity="relu")
    return model


@pytest.fixture(scope="session")
def client():
    """One Dask LocalCluster (2 worker processes on 127.0.0.1) shared by the engine tests."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as dask_client,
    ):
        yield dask_client


@pytest.fixture
def small_model():
    return make_model()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
