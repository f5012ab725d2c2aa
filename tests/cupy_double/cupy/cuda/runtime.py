"""``cupy.cuda.runtime`` of the test double: device count and free/total memory are configurable.

``set_device_count(0)`` makes ``getDeviceCount`` raise :class:`CUDARuntimeError` as the real
runtime does without a driver; ``set_mem_info(free, total)`` simulates a nearly full device.
"""

_STATE = {"count": 1, "free": 16 * 2**30, "total": 16 * 2**30, "broken": None}


class CUDARuntimeError(RuntimeError):
    """The CUDA runtime's error type."""


def getDeviceCount() -> int:
    if _STATE["count"] <= 0:
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
    return _STATE["count"]


def memGetInfo() -> tuple[int, int]:
    return _STATE["free"], _STATE["total"]


def deviceSynchronize() -> None:
    """No-op (the double runs synchronously)."""


def getDevice() -> int:
    return 0


def runtimeGetVersion() -> int:
    return 12040


def getDeviceProperties(device: int) -> dict:
    return {"name": b"CuPy double (NumPy)", "totalGlobalMem": _STATE["total"]}


def set_mem_info(free: int, total: int | None = None) -> None:
    """Configure what :func:`memGetInfo` reports (test hook)."""
    _STATE["free"] = int(free)
    _STATE["total"] = int(total if total is not None else max(free, _STATE["total"]))


def set_device_count(n: int) -> None:
    """Configure what :func:`getDeviceCount` reports (test hook; ``0`` makes it raise)."""
    _STATE["count"] = int(n)


def set_broken(library: str | None) -> None:
    """Make ``"nvrtc"``, ``"cublas"`` or ``"cusparse"`` fail as on a broken CUDA install (test hook)."""
    _STATE["broken"] = library


def broken(library: str) -> bool:
    return _STATE["broken"] == library


def reset() -> None:
    """Restore one device with 16 GiB free, an empty memory pool and working libraries."""
    _STATE.update(count=1, free=16 * 2**30, total=16 * 2**30, broken=None)
    from cupy import _pool

    _pool.POOL.reset()
