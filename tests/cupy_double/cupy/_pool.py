"""CuPy's default memory pool in the double: the free bytes it caches are configurable.

CuPy keeps freed device blocks in ``cupy.get_default_memory_pool()`` and reuses them; the driver's
``memGetInfo`` does not count them as free (cupy/cuda/memory.pyx, ``MemoryPool.free_bytes``).
"""

from __future__ import annotations


class MemoryPool:
    """``cupy.cuda.MemoryPool`` with a settable cache (test hook :meth:`set_free_bytes`)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._free = 0
        self._used = 0

    def set_free_bytes(self, nbytes: int) -> None:
        self._free = int(nbytes)

    def free_bytes(self) -> int:
        return self._free

    def used_bytes(self) -> int:
        return self._used

    def total_bytes(self) -> int:
        return self._free + self._used

    def free_all_blocks(self, stream=None) -> None:
        self._free = 0


POOL = MemoryPool()


def get_default_memory_pool() -> MemoryPool:
    return POOL
