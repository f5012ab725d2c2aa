"""cellfate_gpu: CellRank-compatible single-cell fate mapping at atlas scale."""

from cellfate_gpu import backends as backends
from cellfate_gpu import datasets as datasets
from cellfate_gpu import estimators as estimators
from cellfate_gpu import kernels as kernels
from cellfate_gpu import linalg as linalg
from cellfate_gpu import logging as logging
from cellfate_gpu import models as models
from cellfate_gpu import pl as pl
from cellfate_gpu._settings import settings as settings
from cellfate_gpu.lineage import Lineage as Lineage

__version__ = "0.1.0"
