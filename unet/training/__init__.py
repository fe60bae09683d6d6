"""Training the network the paper's way: data, weight maps, augmentation, the loop, and
generated images with ground truth (:mod:`~unet.training.synthetic`)."""
