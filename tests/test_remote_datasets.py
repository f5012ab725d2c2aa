"""Real-data loaders, tested against a local HTTP server (nothing is downloaded from outside)."""

import functools
import http.server
import threading

import anndata as ad
import numpy as np
import pytest

from cellfate_gpu import _remote_datasets as remote


@pytest.fixture
def served(tmp_path):
    """Serve a small .h5ad from tmp_path/www over HTTP on localhost; yield (url, adata)."""
    www = tmp_path / "www"
    www.mkdir()
    adata = ad.AnnData(np.arange(12, dtype=np.float32).reshape(4, 3))
    adata.write_h5ad(www / "small.h5ad")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/small.h5ad", adata
    finally:
        server.shutdown()


@pytest.fixture
def small_spec(monkeypatch, served):
    url, _ = served
    spec = remote.RemoteDataset("small", url, (4, 3))
    monkeypatch.setitem(remote.REMOTE_DATASETS, "small", spec)
    return spec


def test_download_then_cache(tmp_path, monkeypatch, served, small_spec):
    monkeypatch.setenv("CELLFATE_CACHE_DIR", str(tmp_path / "cache"))
    _, expected = served
    first = remote.load("small")
    np.testing.assert_array_equal(first.X, expected.X)
    cached = tmp_path / "cache" / "small.h5ad"
    assert cached.is_file()
    # Second load reads the cache: point the spec at a dead address to prove no download happens.
    monkeypatch.setitem(remote.REMOTE_DATASETS, "small", remote.RemoteDataset("small", "http://127.0.0.1:9/x", (4, 3)))
    np.testing.assert_array_equal(remote.load("small").X, expected.X)


def test_wrong_shape_is_reported(tmp_path, monkeypatch, served):
    url, _ = served
    monkeypatch.setitem(remote.REMOTE_DATASETS, "small", remote.RemoteDataset("small", url, (5, 3)))
    with pytest.raises(ValueError, match=r"shape \(4, 3\), expected \(5, 3\)"):
        remote.load("small", path=tmp_path / "small.h5ad")


def test_checksum_mismatch(tmp_path, monkeypatch, served):
    url, _ = served
    monkeypatch.setitem(remote.REMOTE_DATASETS, "small", remote.RemoteDataset("small", url, (4, 3), sha256="0" * 64))
    with pytest.raises(ValueError, match="Checksum"):
        remote.load("small", path=tmp_path / "small.h5ad")


def test_failed_download_leaves_no_file(tmp_path, monkeypatch, served):
    url, _ = served
    monkeypatch.setitem(remote.REMOTE_DATASETS, "small", remote.RemoteDataset("small", url + ".missing", (4, 3)))
    with pytest.raises(OSError):
        remote.load("small", path=tmp_path / "small.h5ad")
    assert list(tmp_path.glob("small*")) == []


def test_unknown_name():
    with pytest.raises(ValueError, match="Unknown data set 'nope'"):
        remote.load("nope")


def test_registry_has_cellrank_sets():
    assert {"pancreas", "bone_marrow", "lung", "reprogramming_morris"} <= set(remote.REMOTE_DATASETS)
    assert remote.REMOTE_DATASETS["bone_marrow"].shape == (5780, 27876)


@pytest.fixture
def cellrank_named(tmp_path, monkeypatch):
    """Serve one file per CellRank data set (right shapes, few genes stand in via a shrunk registry)."""
    www = tmp_path / "www2"
    www.mkdir()
    specs = {}
    for key in (
        "pancreas",
        "pancreas_preprocessed",
        "pancreas_preprocessed_vk",
        "lung",
        "reprogramming_morris",
        "reprogramming_schiebinger",
        "reprogramming_schiebinger_serum_subset",
        "zebrafish",
        "bone_marrow",
    ):
        a = ad.AnnData(np.ones((6, 2), dtype=np.float32))
        a.var_names = ["g", "g"]  # CellRank makes var names unique
        a.obs["cluster"] = ["a", None, "b", None, "c", "d"]
        a.obs["timecourse"] = ["x", "y", None, "z", "w", "v"]
        a.write_h5ad(www / f"{key}.h5ad")
        specs[key] = key
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    for key in specs:
        monkeypatch.setitem(remote.REMOTE_DATASETS, key, remote.RemoteDataset(key, f"{base}/{key}.h5ad", (6, 2)))
    monkeypatch.chdir(tmp_path)
    try:
        yield base
    finally:
        server.shutdown()


def test_cellrank_named_loaders(cellrank_named, tmp_path):
    import cellfate_gpu as cf

    assert cf.datasets.pancreas is remote.pancreas and cf.datasets.bone_marrow is remote.bone_marrow
    a = remote.pancreas(kind="preprocessed")
    assert (tmp_path / "datasets" / "endocrinogenesis_day15.5_preprocessed.h5ad").is_file()
    assert list(a.var_names) == ["g", "g-1"]
    remote.pancreas(kind="preprocessed-kernel")
    assert (tmp_path / "datasets" / "endocrinogenesis_day15.5_preprocessed-kernel.h5ad").is_file()
    with pytest.raises(ValueError, match="kind"):
        remote.pancreas(kind="nope")
    assert remote.reprogramming_morris(subset="48k").n_obs == 4
    assert remote.reprogramming_morris(subset="85k").n_obs == 5
    assert remote.reprogramming_morris().n_obs == 6
    remote.reprogramming_schiebinger(subset_to_serum=True)
    assert (tmp_path / "datasets" / "reprogramming_schiebinger_serum.h5ad").is_file()
    for fn, name in (
        (remote.lung, "lung_regeneration"),
        (remote.zebrafish, "zebrafish"),
        (remote.bone_marrow, "bone_marrow"),
    ):
        assert fn().shape == (6, 2)
        assert (tmp_path / "datasets" / f"{name}.h5ad").is_file()
    # a mirror through scanpy's keyword
    b = remote.lung(path=tmp_path / "mirror" / "lung.h5ad", backup_url=f"{cellrank_named}/lung.h5ad")
    assert b.shape == (6, 2)
