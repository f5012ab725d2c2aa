"""``cupy.cuda.device`` of the test double."""

from cupy._double import Device

__all__ = ["Device"]
