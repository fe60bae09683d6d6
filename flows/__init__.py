"""Prefect flows over the ``unet`` engine."""
