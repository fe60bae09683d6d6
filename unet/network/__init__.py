"""The network: the paper's U-Net, its banded CPU forward pass, and safetensors checkpoints.

Imports torch (through :mod:`~unet.network.model`) only when a submodule that needs it is loaded.
"""
