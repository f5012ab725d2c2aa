"""Run the same pipeline with CellRank 2.3.3 (inside its Python 3.12 venv) and write timings + arrays.

Usage: python cellrank_runner.py atlas.h5ad terminal.json out.json
terminal.json maps lineage name -> obs names (our terminal states), so fate probabilities are
compared on the same T and the same terminal states. Fate probabilities use use_petsc=False:
CellRank 2.3.3's PETSc path fails with petsc4py 3.26 (`Mat.getVecs` is gone).
"""

import json
import resource
import sys
import time

import anndata as ad
import numpy as np


def main(h5ad, terminal_json, out_json):
    import cellrank as cr

    adata = ad.read_h5ad(h5ad)
    terminal = json.loads(open(terminal_json).read())
    steps = []

    def step(name, fn):
        t = time.perf_counter()
        value = fn()
        steps.append({"step": name, "seconds": time.perf_counter() - t,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
        return value

    pk = step("kernel_pseudotime", lambda: cr.kernels.PseudotimeKernel(adata, time_key="pseudotime")
              .compute_transition_matrix(threshold_scheme="hard", frac_to_keep=0.3, show_progress_bar=False))
    ck = step("kernel_connectivity", lambda: cr.kernels.ConnectivityKernel(adata).compute_transition_matrix())
    combined = step("kernel_combination", lambda: 0.8 * pk + 0.2 * ck)
    g = cr.estimators.GPCCA(combined)
    step("schur_20", lambda: g.compute_schur(n_components=20))
    step("macrostates_10", lambda: g.compute_macrostates(n_states=10, cluster_key="clusters"))
    step("terminal_top6", lambda: g.predict_terminal_states(method="top_n", n_states=6))
    g.set_terminal_states(terminal)
    step("fate_probabilities", lambda: g.compute_fate_probabilities(use_petsc=False, show_progress_bar=False))
    fate = g.fate_probabilities
    step("absorption_times", lambda: g.compute_absorption_times(use_petsc=False, show_progress_bar=False))
    step("drivers", lambda: g.compute_lineage_drivers(lineages=[fate.names[0]]))
    T = combined.transition_matrix.tocsr()
    ev = np.asarray(g.eigendecomposition["D"]) if g.eigendecomposition is not None else np.asarray(g._schur_matrix_evals if hasattr(g, "_schur_matrix_evals") else [])
    arrays = out_json.replace(".json", ".npz")
    np.savez(arrays, T_data=T.data, T_indices=T.indices, T_indptr=T.indptr, T_shape=np.array(T.shape),
             eig_real=np.real(ev), eig_imag=np.imag(ev), fate=np.asarray(fate), fate_names=np.array(fate.names))
    json.dump({"steps": steps, "arrays": arrays, "cellrank": cr.__version__}, open(out_json, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:4])
