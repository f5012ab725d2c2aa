"""``cupy.random`` of the test double (generated on the device: no transfer counted)."""

import numpy as _np
from cupy._double import ndarray


class Generator:
    """``cupy.random.Generator`` over NumPy's."""

    def __init__(self, seed=None):
        self._rng = _np.random.default_rng(seed)

    def standard_normal(self, size=None, dtype=_np.float64):
        return ndarray(_np.asarray(self._rng.standard_normal(size, dtype=dtype)))

    def random(self, size=None, dtype=_np.float64):
        return ndarray(_np.asarray(self._rng.random(size, dtype=dtype)))


def default_rng(seed=None) -> Generator:
    return Generator(seed)


__all__ = ["Generator", "default_rng"]
