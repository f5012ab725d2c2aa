"""``cupyx`` of the CuPy test double (only ``cupyx.scipy.sparse`` is provided)."""

from . import scipy  # noqa: F401
