"""cellfate_gpu: CellRank-compatible single-cell fate mapping at atlas scale."""

from cellfate_gpu import backends as backends
from cellfate_gpu import linalg as linalg
from cellfate_gpu._settings import settings as settings

__version__ = "0.1.0"
