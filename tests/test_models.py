"""The bundled models, loaded by name as users do (``--model satellite``)."""

from __future__ import annotations

import numpy as np

from unet import load_checkpoint, predict_array
from unet.results.evaluate import confusion_matrix, dice_iou
from unet.training.synthetic import SatelliteScene, render, satellite_reflectance


def test_satellite_model_segments_an_unseen_scene():
    """Four generated scenes it never saw (trained on seeds 100..131; the walkthrough's is 1),
    as scripts/make_scene.py writes them: foreground Dice (field, road, building, water) pooled
    over them >= 0.9, and the bands it checks are make_scene.py's."""
    checkpoint = load_checkpoint("satellite")
    assert checkpoint.class_names == ["other", "field", "road", "building", "water"]
    assert checkpoint.metadata["band_names"] == ["red", "green", "blue", "nir"]
    confusion = np.zeros((5, 5), np.int64)
    everything = slice(0, 256)
    for seed in range(20000, 20004):
        image, truth = render(SatelliteScene(shape=(256, 256), seed=seed), everything, everything)
        logits = predict_array(checkpoint.model, checkpoint.normalize(satellite_reflectance(image)))
        confusion += confusion_matrix(logits.argmax(axis=0), truth, 5)
    dice, _ = dice_iou(confusion)
    assert all(d is not None for d in dice), "every class occurs in these scenes"
    assert np.mean(dice[1:]) >= 0.9, dice
