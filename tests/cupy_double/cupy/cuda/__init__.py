"""``cupy.cuda`` of the test double: one device, streams as no-ops, a configurable ``memGetInfo``."""

from cupy._double import Device

from . import runtime
from .device import Device as _Device  # noqa: F401


class Stream:
    """A no-op stream (work in the double is synchronous)."""

    null = None

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self) -> None:
        pass


Stream.null = Stream()
ExternalStream = Stream


def get_current_stream() -> Stream:
    return Stream.null


def is_available() -> bool:
    return runtime.getDeviceCount() > 0


__all__ = ["Device", "ExternalStream", "Stream", "get_current_stream", "is_available", "runtime"]
