"""The generated branching atlas: keys and types, determinism, graph properties, biology, cache."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellfate_gpu.datasets import lineage_names, synthetic_atlas


@pytest.fixture(scope="module")
def adata():
    return synthetic_atlas(n_cells=900, n_lineages=3, n_genes=60, n_neighbors=12, seed=1)


def test_documented_keys_and_types(adata):
    assert adata.shape == (900, 60)
    names = lineage_names(3)
    assert names == ["Lineage_A", "Lineage_B", "Lineage_C"]
    clusters = adata.obs["clusters"]
    assert isinstance(clusters.dtype, pd.CategoricalDtype)
    assert list(clusters.cat.categories) == ["Root", "Progenitor", *[f"{n}_early" for n in names], *names]
    assert len(adata.uns["clusters_colors"]) == len(clusters.cat.categories)
    np.testing.assert_array_equal(adata.obs["pseudotime"], adata.obs["dpt_pseudotime"])
    t = adata.obs["pseudotime"].to_numpy()
    assert t.min() >= 0 and t.max() <= 1
    assert set(adata.obs["lineage"].astype(str)) == {"Root", *names}
    assert adata.obs["is_terminal"].dtype == bool and adata.obs["is_terminal"].any()
    assert (adata.obs.loc[adata.obs["is_terminal"], "clusters"].astype(str).isin(names)).all()
    assert adata.obsm["X_umap"].shape == (900, 2) and adata.obsm["X_pca"].shape[0] == 900
    for key in ("spliced", "unspliced", "Ms", "Mu", "velocity"):
        assert adata.layers[key].shape == (900, 60), key
    assert sp.issparse(adata.X) and adata.X.dtype == np.float32 and sp.isspmatrix_csr(adata.X)
    assert adata.var["velocity_genes"].dtype == bool and adata.var["velocity_genes"].any()
    nb = adata.uns["neighbors"]
    assert nb["connectivities_key"] == "connectivities" and nb["distances_key"] == "distances"
    assert nb["params"]["n_neighbors"] == 12


def test_deterministic_per_seed(adata):
    again = synthetic_atlas(n_cells=900, n_lineages=3, n_genes=60, n_neighbors=12, seed=1)
    other = synthetic_atlas(n_cells=900, n_lineages=3, n_genes=60, n_neighbors=12, seed=2)
    for key in ("Ms", "velocity"):
        np.testing.assert_array_equal(adata.layers[key], again.layers[key])
    assert (adata.X != again.X).nnz == 0
    assert (adata.obsp["connectivities"] != again.obsp["connectivities"]).nnz == 0
    pd.testing.assert_frame_equal(adata.obs, again.obs)
    assert not np.array_equal(adata.layers["Ms"], other.layers["Ms"])


def test_knn_graph(adata):
    C, D = adata.obsp["connectivities"], adata.obsp["distances"]
    assert abs(C - C.T).max() < 1e-12  # symmetric
    assert C.min() >= 0 and C.max() <= 1 and C.diagonal().sum() == 0
    np.testing.assert_array_equal(np.diff(D.indptr), 12)  # exactly k neighbours per cell, self excluded
    # the distances are the true k nearest neighbours in the latent space
    X = np.asarray(adata.obsm["X_pca"], dtype=np.float64)
    i = 17
    d = np.linalg.norm(X - X[i], axis=1)
    d[i] = np.inf
    np.testing.assert_allclose(np.sort(D[i].data), np.sort(d)[:12], rtol=1e-5)
    from scipy.sparse.csgraph import connected_components

    assert connected_components(C, directed=False)[0] == 1


def test_biology_that_the_kernels_rely_on(adata):
    t = adata.obs["pseudotime"].to_numpy()
    # CytoTRACE's premise: fewer genes expressed late than early
    n_genes = np.asarray((adata.X > 0).sum(axis=1)).ravel()
    assert np.corrcoef(t, n_genes)[0, 1] < -0.3
    # velocity points along differentiation: on velocity genes, v correlates with d(Ms)/dt along pseudotime
    early, late = t < 0.3, t > 0.8
    v_genes = adata.var["velocity_genes"].to_numpy()
    stem = (adata.var["program"] == "stemness").to_numpy()
    assert (adata.layers["velocity"][early][:, stem].mean(axis=0) < 0).all()
    assert (adata.layers["Ms"][early][:, stem].mean(axis=0) > adata.layers["Ms"][late][:, stem].mean(axis=0)).all()
    assert v_genes[stem].all()
    # the trunk comes before the branches
    assert t[adata.obs["lineage"] == "Root"].max() <= t[adata.obs["lineage"] != "Root"].min()
    # the embedding separates the terminal clusters
    umap = adata.obsm["X_umap"]
    centres = [umap[(adata.obs["clusters"] == n).to_numpy()].mean(axis=0) for n in lineage_names(3)]
    assert min(np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1 :]) > 2.0


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="n_cells"):
        synthetic_atlas(n_cells=20, n_lineages=3)


def test_cache_round_trip(tmp_path, monkeypatch):
    import cellfate_gpu.datasets as ds

    monkeypatch.setenv("CELLFATE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ds, "_CACHE_MIN_CELLS", 300)
    first = ds.synthetic_atlas(n_cells=300, n_genes=10, seed=5)
    files = list(tmp_path.glob("synthetic_atlas_300_*.h5ad"))
    assert len(files) == 1
    second = ds.synthetic_atlas(n_cells=300, n_genes=10, seed=5)
    np.testing.assert_array_equal(first.layers["Ms"], second.layers["Ms"])
    assert (first.obsp["connectivities"] != second.obsp["connectivities"]).nnz == 0
    ds.synthetic_atlas(n_cells=300, n_genes=10, seed=6)
    assert len(list(tmp_path.glob("synthetic_atlas_300_*.h5ad"))) == 2  # keyed by the parameters
    ds.synthetic_atlas(n_cells=300, n_genes=10, seed=7, cache=False)
    assert len(list(tmp_path.glob("synthetic_atlas_300_*.h5ad"))) == 2
