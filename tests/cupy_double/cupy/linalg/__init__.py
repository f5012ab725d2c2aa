"""``cupy.linalg`` of the test double (NumPy's linalg under the double's rules)."""

import numpy as _np
from cupy._double import device_function

__all__ = []
for _name in (
    "norm", "qr", "svd", "eigh", "eigvalsh", "inv", "pinv", "solve", "lstsq", "cholesky", "det",
    "slogdet", "matrix_rank", "matrix_power", "tensorsolve", "tensorinv", "multi_dot",
):  # fmt: skip
    globals()[_name] = device_function(getattr(_np.linalg, _name), _name)
    __all__.append(_name)
del _name
