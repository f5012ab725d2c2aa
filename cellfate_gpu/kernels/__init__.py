"""Kernels: turn an AnnData into a row-stochastic transition matrix on a backend."""

from cellfate_gpu.kernels._base import BidirectionalKernel as BidirectionalKernel
from cellfate_gpu.kernels._base import Kernel as Kernel
from cellfate_gpu.kernels._base import UnidirectionalKernel as UnidirectionalKernel
from cellfate_gpu.kernels._connectivity import ConnectivityKernel as ConnectivityKernel
from cellfate_gpu.kernels._cytotrace import CytoTRACEKernel as CytoTRACEKernel
from cellfate_gpu.kernels._expression import KernelExpression as KernelExpression
from cellfate_gpu.kernels._precomputed import PrecomputedKernel as PrecomputedKernel
from cellfate_gpu.kernels._pseudotime import PseudotimeKernel as PseudotimeKernel
from cellfate_gpu.kernels._realtime import RealTimeKernel as RealTimeKernel
from cellfate_gpu.kernels._velocity import VelocityKernel as VelocityKernel
