"""``cupyx.scipy`` of the CuPy test double."""

from . import sparse  # noqa: F401
