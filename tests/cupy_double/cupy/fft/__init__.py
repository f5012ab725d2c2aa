"""``cupy.fft`` of the test double."""

import numpy as _np
from cupy._double import device_function

__all__ = []
for _name in _np.fft.__all__:
    globals()[_name] = device_function(getattr(_np.fft, _name), _name)
    __all__.append(_name)
del _name
