r"""The ``petsc`` backend: PETSc KSP and SLEPc EPS on a row-distributed matrix, one core to a cluster.

Run model (SPMD)
----------------
Every rank runs the same script (``mpiexec -n N python script.py``).  Kernels and estimators run
on the host exactly as on the ``scipy`` backend (this backend composes a
:class:`~cellfate_gpu.backends._scipy.ScipyBackend` and delegates every CSR primitive to it;
native matrices are SciPy CSR).  Only the two heavy operations go to PETSc:

* :meth:`PetscBackend.partial_schur` — SLEPc EPS Krylov-Schur (problem type NHEP);
* :meth:`PetscBackend.solve` — a PETSc KSP (GMRES, BiCGStab or LU) set up once for all columns.

Each call copies its rank's contiguous block of rows of the host CSR matrix into a PETSc MPIAIJ
matrix (rows ``[rstart, rend)`` as PETSc's ownership ranges would split them; global column ids).
Where the rows come from depends on ``distribution``:

``"replicated"`` (default)
    Every rank holds the same host CSR (each read the AnnData and built the same kernel; the
    kernels are deterministic) and takes its own row block; no communication.  A cheap check
    (shape, ``nnz``, a position-weighted sum of the entries) verifies that the ranks really hold the same matrix.
``"root"``
    Only rank 0's matrix and right-hand sides are used; the row blocks are scattered from rank 0
    with mpi4py (``Scatterv``).  Other ranks may pass ``None`` to the backend methods.

Results (``X``, ``Q``, ``R``, eigenvalues) are gathered (``Allgatherv``) and returned on **every**
rank as NumPy arrays, so the host-side estimator code continues identically everywhere; write
files from rank 0 only (:func:`cellfate_gpu._mpi.root_only_write`).

Options
-------
Solver settings given as arguments are applied first, then the PETSc options database is read
(``KSPSetFromOptions``/``EPSSetFromOptions``), so the usual PETSc flags on the command line
(``-ksp_type bcgs -pc_type asm -ksp_monitor``, ``-eps_ncv 60 -eps_view``; no prefix) and in the
``PETSC_OPTIONS`` environment variable override them, and the backend's own ``petsc_options``
(constructor or :meth:`PetscBackend.set_options`) override both.  PETSc is initialised on the first
heavy call with ``sys.argv`` (never at import).

Modules: ``_backend`` (the class: start-up, options, transfers, the composed scipy backend),
``_options`` (argv filtering and the options database), ``_distribution`` (row distribution),
``_eps`` (the partial Schur path), ``_ksp`` (the linear-solve path).
"""

from cellfate_gpu.backends._petsc._backend import PetscBackend as PetscBackend
from cellfate_gpu.backends._petsc._options import PetscBuildError as PetscBuildError
from cellfate_gpu.linalg._schur_sort import sorted_real_schur as sorted_real_schur

__all__ = ["PetscBackend", "PetscBuildError", "sorted_real_schur"]
