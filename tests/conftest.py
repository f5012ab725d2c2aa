"""Shared fixtures: the backend fixture (every registered backend, unavailable ones skipped with
their reason), small generated atlases, and the shared real test data.

The ``cupy`` case of the backend fixture runs everywhere: on the real CuPy (marker ``gpu``) where
CuPy and a CUDA device are usable, else on the strict CuPy test double of ``tests/cupy_double``
(CuPy 14's namespace and limits over NumPy, refusing implicit host conversion), so that every
backend-parametrised test exercises the cupy backend's code in CI.
"""

import logging
import os
from pathlib import Path

# The jax backend requires 64-bit mode at start-up and never turns it on itself (backends/_jax.py);
# the test process opts in here, before anything imports JAX.
os.environ.setdefault("JAX_ENABLE_X64", "1")

import matplotlib
import numpy as np
import pytest
import scipy.sparse as sp

matplotlib.use("Agg")

from cellfate_gpu import settings
from cellfate_gpu.backends import available_backends

settings.verbosity = 1  # keep test output quiet; tests of logging raise it locally


def real_gpu_reason() -> str | None:
    """``None`` when the real CuPy and a CUDA device are usable, else why not (no import side effects)."""
    import importlib.util

    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed"
    try:
        import cupy
    except Exception as err:  # a broken installation
        return f"CuPy does not import ({type(err).__name__}: {err})"
    if getattr(cupy, "IS_DOUBLE", False):
        return "the CuPy test double is on sys.path, not the real CuPy"
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            return "no CUDA device"
    except Exception as err:
        return f"no usable CUDA device ({type(err).__name__}: {err})"
    return None


_REAL_GPU = real_gpu_reason() is None
_MARKS = {"cupy": [pytest.mark.gpu] if _REAL_GPU else [], "petsc": [pytest.mark.petsc]}
_IDS = {"cupy": "cupy" if _REAL_GPU else "cupy-double"}
_BACKENDS = [  # every registered backend, scipy first
    pytest.param(name, marks=_MARKS.get(name, []), id=_IDS.get(name, name))
    for name in sorted(available_backends(), key=lambda name: (name != "scipy", name))
]


@pytest.fixture(params=_BACKENDS)
def backend(request, monkeypatch):
    """Name of every registered backend; one that cannot run here is skipped with its reason.

    ``cupy`` without a usable GPU runs on the CuPy test double (installed for this test only).
    """
    if request.param == "cupy" and not _REAL_GPU:
        try:
            from cupy_double import install
        except ImportError:
            from tests.cupy_double import install
        with install(monkeypatch):
            yield request.param
        return
    reason = available_backends().get(request.param)
    if reason is not None:
        pytest.skip(f"backend {request.param!r} unavailable: {reason}")
    yield request.param


@pytest.fixture(scope="session")
def atlas():
    """A small generated branching atlas (600 cells, 3 lineages); do not modify it (use ``atlas_copy``)."""
    from cellfate_gpu.datasets import synthetic_atlas

    return synthetic_atlas(n_cells=600, n_lineages=3, n_genes=40, seed=0)


@pytest.fixture
def atlas_copy(atlas):
    return atlas.copy()


def shared_data_dir() -> Path:
    """``<repo>/../shared/data`` when present, else env ``CELLFATE_SHARED_DATA``."""
    local = Path(__file__).resolve().parents[2] / "shared" / "data"
    env = os.environ.get("CELLFATE_SHARED_DATA")
    return local if local.is_dir() or not env else Path(env)


@pytest.fixture
def toy_adata():
    """CellRank's 50-cell toy data (scVelo-processed); skipped when the shared data are absent."""
    import anndata as ad

    path = shared_data_dir() / "cellrank_toy_50.h5ad"
    if not path.is_file():
        pytest.skip(f"shared test data not found at {path}")
    return ad.read_h5ad(path)


def random_stochastic(n: int, density: float, seed: int) -> sp.csr_matrix:
    """Random sparse row-stochastic matrix with a non-zero diagonal (irreducible in practice)."""
    rng = np.random.default_rng(seed)
    A = sp.random(n, n, density=density, random_state=rng, format="csr") + sp.identity(n) * 0.1
    A = sp.csr_matrix(A.multiply(1.0 / np.asarray(A.sum(axis=1))))
    A.sum_duplicates()
    return A


def knn_chain(n: int, k: int = 12, seed: int = 0, forward: float = 0.3) -> sp.csr_matrix:
    """A kNN-structured, forward-biased stochastic matrix on a branching 2-D point cloud."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    t = np.sort(rng.random(n))
    side = np.where(rng.random(n) > 0.5, 1.0, -1.0)
    X = np.c_[t, 0.05 * rng.standard_normal(n) + (t > 0.5) * (t - 0.5) * side]
    d, idx = cKDTree(X).query(X, k)
    rows = np.repeat(np.arange(n), k)
    w = np.exp(-(d.ravel() ** 2) / np.median(d) ** 2) * np.where(t[idx.ravel()] >= t[rows], 1.0, forward)
    A = sp.csr_matrix((w, (rows, idx.ravel())), shape=(n, n))
    # A weak chain through the pseudotime order keeps the graph connected, so eigenvalue 1 is simple
    # (single-vector Krylov methods cannot separate exactly repeated eigenvalues reliably).
    ring = sp.diags([np.full(n - 1, 1e-2), np.full(n - 1, 1e-2)], [1, -1], shape=(n, n))
    A = sp.csr_matrix(A + ring)
    A.sum_duplicates()
    return sp.csr_matrix(A.multiply(1.0 / np.asarray(A.sum(axis=1))))


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def log_messages():
    """Messages the ``cellfate_gpu`` logger emits during the test (after its verbosity filter)."""
    logger = logging.getLogger("cellfate_gpu")
    handler = _Capture()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)
