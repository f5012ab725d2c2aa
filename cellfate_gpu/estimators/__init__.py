"""Estimators: analyse a kernel's transition matrix (GPCCA, CFLARE)."""

from cellfate_gpu.estimators._cflare import CFLARE as CFLARE
from cellfate_gpu.estimators._gpcca import GPCCA as GPCCA
