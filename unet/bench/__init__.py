"""What ``unet bench`` measures, as public functions: inputs (:mod:`~unet.bench.inputs`) and
measurements (:mod:`~unet.bench.measure`).

The harness that runs them in fresh processes, compares with MONAI's sliding window, takes the
median of several rounds and prints the targets lives in the repository's ``benchmarks/``
(``benchmarks/bench.py``, which ``unet bench`` runs); its method and results are in
``benchmarks/README.md``.
"""
