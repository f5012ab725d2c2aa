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
