"""The chunk engine: segment an image stored in Zarr chunk by chunk on Dask.

- :mod:`~unet.engine.plan`: open and check everything a run depends on (:func:`plan_run`);
- :mod:`~unet.engine.destination`: where a run writes (a mask of its own, or a label image
  inside the segmented image);
- :mod:`~unet.engine.run`: the driver, one task per pending chunk (:func:`segment`);
- :mod:`~unet.engine.worker`: the work of one chunk inside a Dask worker;
- :mod:`~unet.engine.output`, :mod:`~unet.engine.ledger`, :mod:`~unet.engine.lock`: the output
  store, its record of finished chunks and fingerprint, and the one-run-per-output lock;
- :mod:`~unet.engine.cluster`, :mod:`~unet.engine.allocator`: where chunks run, and how;
- :mod:`~unet.engine.background`: which chunks hold tissue;
- :mod:`~unet.engine.report`: what a run did.
"""
