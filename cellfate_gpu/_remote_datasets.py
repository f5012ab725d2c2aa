"""CellRank's public data sets: download once, cache on disk, check the shape (and checksum).

The registry below holds facts (address and expected ``(n_obs, n_vars)``) published with
CellRank's data sets; CellRank publishes no checksums, so none are checked unless a
:class:`RemoteDataset` carries one. The named loaders (:func:`pancreas`, :func:`lung`, ...) have
CellRank's signatures and default file names (``datasets/endocrinogenesis_day15.5_raw.h5ad``, ...).
Nothing is downloaded at import or in the test suite; tests serve a local file over a local HTTP
server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from cellfate_gpu._logging import info, timed

__all__ = [
    "REMOTE_DATASETS",
    "RemoteDataset",
    "bone_marrow",
    "cache_dir",
    "load",
    "lung",
    "pancreas",
    "reprogramming_morris",
    "reprogramming_schiebinger",
    "zebrafish",
]


@dataclasses.dataclass(frozen=True)
class RemoteDataset:
    """A downloadable AnnData: where it is and what shape it must have."""

    name: str
    url: str
    shape: tuple[int, int]
    sha256: str | None = None


_FIGSHARE = "https://figshare.com/ndownloader/files/"
REMOTE_DATASETS: dict[str, RemoteDataset] = {
    d.name: d
    for d in (
        RemoteDataset("pancreas", _FIGSHARE + "25060877", (2531, 27998)),
        RemoteDataset("pancreas_preprocessed", _FIGSHARE + "25030028", (2531, 2000)),
        RemoteDataset("pancreas_preprocessed_vk", _FIGSHARE + "41325411", (2531, 5974)),
        RemoteDataset("lung", _FIGSHARE + "25038224", (24882, 24051)),
        RemoteDataset("reprogramming_morris", _FIGSHARE + "25503773", (104679, 22630)),
        RemoteDataset("zebrafish", _FIGSHARE + "27265280", (2434, 23974)),
        RemoteDataset("reprogramming_schiebinger", _FIGSHARE + "28618734", (236285, 19089)),
        RemoteDataset("reprogramming_schiebinger_serum_subset", _FIGSHARE + "35858033", (165892, 19089)),
        RemoteDataset("bone_marrow", _FIGSHARE + "35826944", (5780, 27876)),
    )
}


def cache_dir() -> Path:
    """Folder of cached downloads and generated atlases (env ``CELLFATE_CACHE_DIR`` overrides)."""
    root = os.environ.get("CELLFATE_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "cellfate_gpu"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, target: Path, timeout: float) -> None:
    """Stream ``url`` to ``target`` atomically: a partial download never looks like a cached file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out, length=1 << 20)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(name: str, path: str | os.PathLike | None = None, *, url: str | None = None, timeout: float = 60.0):
    """Load one of CellRank's data sets, downloading it into the cache on first use.

    Parameters
    ----------
    name
        One of :data:`REMOTE_DATASETS` (``"pancreas"``, ``"bone_marrow"``, ``"lung"``, ...).
    path
        Where the ``.h5ad`` lives or should be written (default: ``cache_dir() / f"{name}.h5ad"``).
    url
        Override the address (a mirror, or a local server in tests).
    timeout
        Seconds to wait for the server.

    Returns
    -------
    anndata.AnnData
        The data set, checked to have the expected ``(n_obs, n_vars)``.

    Raises
    ------
    ValueError
        Unknown name, or the file has another shape (a truncated or wrong download; the file is
        kept so it can be inspected, and the message names it).
    """
    import anndata as ad

    if name not in REMOTE_DATASETS:
        raise ValueError(f"Unknown data set {name!r}; available: {sorted(REMOTE_DATASETS)}.")
    spec = REMOTE_DATASETS[name]
    target = Path(path) if path is not None else cache_dir() / f"{name}.h5ad"
    if target.suffix != ".h5ad":
        target = target.with_suffix(".h5ad")
    if target.is_file():
        info("Loading data set %r from %s", name, target)
    else:
        with timed("Downloading data set %r from %s to %s", name, url or spec.url, target):
            _download(url or spec.url, target, timeout)
    if spec.sha256 is not None and _sha256(target) != spec.sha256:
        raise ValueError(f"Checksum of {target} does not match the published one for {name!r}; delete it and retry.")
    adata = ad.read_h5ad(target)
    if tuple(adata.shape) != spec.shape:
        raise ValueError(
            f"Data set {name!r} at {target} has shape {tuple(adata.shape)}, expected {spec.shape}; "
            "the download may be truncated or from the wrong address. Delete the file and retry."
        )
    return adata


def _named(key: str, path: str | os.PathLike, kwargs: dict):
    """Load ``key`` to ``path`` the way CellRank's loaders do (unique var names), honouring ``backup_url``."""
    from cellfate_gpu._logging import info as _info

    url = kwargs.pop("backup_url", None)
    timeout = kwargs.pop("timeout", 60.0)
    for k in ("sparse", "cache"):
        kwargs.pop(k, None)  # scanpy.read options: files here are always read as stored and cached
    if kwargs:
        _info("Ignoring scanpy.read keywords %s", sorted(kwargs))
    adata = load(key, path, url=url, timeout=timeout)
    adata.var_names_make_unique()
    return adata


def pancreas(path: str | os.PathLike = "datasets/endocrinogenesis_day15.5.h5ad", kind: str = "raw", **kwargs):
    """Murine pancreas at E15.5 (Bastidas-Ponce et al. 2019), 2531 cells; CellRank's ``datasets.pancreas``.

    ``kind``: ``"raw"`` (spliced/unspliced counts, embedding, clusters), ``"preprocessed"`` (2000 highly
    variable genes, normalised, log-transformed) or ``"preprocessed-kernel"`` (plus a VelocityKernel
    transition matrix). Stored at ``path`` with ``_<kind>`` before the suffix, as CellRank names it.
    ``backup_url=`` overrides the address.
    """
    keys = {
        "raw": "pancreas",
        "preprocessed": "pancreas_preprocessed",
        "preprocessed-kernel": "pancreas_preprocessed_vk",
    }
    if kind not in keys:
        raise ValueError(f"Unknown pancreas kind {kind!r}; use one of {list(keys)}.")
    p = Path(path)
    return _named(keys[kind], p.with_name(f"{p.stem}_{kind}{p.suffix or '.h5ad'}"), kwargs)


def lung(path: str | os.PathLike = "datasets/lung_regeneration.h5ad", **kwargs):
    """Murine lung epithelium regeneration over 13 time points (Strunz et al. 2020), 24882 cells."""
    return _named("lung", path, kwargs)


def reprogramming_morris(
    path: str | os.PathLike = "datasets/reprogramming_morris.h5ad", subset: str = "full", **kwargs
):
    """Fibroblast to endoderm reprogramming with CellTag lineage tracing (Morris et al. 2018), 104679 cells.

    ``subset``: ``"full"``, ``"85k"`` (cells with ``obs['timecourse']``, Fig. 1) or ``"48k"`` (cells with
    ``obs['cluster']``, Fig. 3), subset after the download, as CellRank does.
    """
    if subset not in ("full", "48k", "85k"):
        raise ValueError(f"subset must be 'full', '48k' or '85k', got {subset!r}.")
    adata = _named("reprogramming_morris", path, kwargs)
    if subset == "48k":
        return adata[~adata.obs["cluster"].isnull()].copy()
    if subset == "85k":
        return adata[~adata.obs["timecourse"].isnull()].copy()
    return adata


def reprogramming_schiebinger(
    path: str | os.PathLike = "datasets/reprogramming_schiebinger.h5ad", subset_to_serum: bool = False, **kwargs
):
    """Fibroblast reprogramming time course (Schiebinger et al. 2019), 236285 cells (serum subset: 165892)."""
    if subset_to_serum:
        p = Path(path)
        return _named("reprogramming_schiebinger_serum_subset", p.with_name(f"{p.stem}_serum{p.suffix}"), kwargs)
    return _named("reprogramming_schiebinger", path, kwargs)


def zebrafish(path: str | os.PathLike = "datasets/zebrafish.h5ad", **kwargs):
    """Zebrafish axial mesoderm development (Lange et al. 2023), 2434 cells."""
    return _named("zebrafish", path, kwargs)


def bone_marrow(path: str | os.PathLike = "datasets/bone_marrow.h5ad", **kwargs):
    """Human bone marrow haematopoiesis (Setty et al. 2019), 5780 cells."""
    return _named("bone_marrow", path, kwargs)
