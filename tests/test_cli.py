"""The command line: kernel-expression parsing, ``run`` end to end, and what it does to files.

``cellfate-gpu run`` must never damage its input, never leave a half-written file under the
output's name (also when interrupted by SIGTERM), refuse a bad ``--out`` before the pipeline,
name the file it cannot read, and always be able to write its output, whatever pandas string
dtype the input used.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellfate_gpu.cli import KernelTerm, kernel_options, main, make_h5ad_writable, parse_kernel_spec

RUN = ["--n-states", "6", "--terminal", "top_n:3", "--backend", "scipy", "--drivers", "0"]
KERNEL = ["--kernel", "pseudotime:weight=0.8 + connectivity:weight=0.2"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


@pytest.fixture(scope="module")
def atlas_file(tmp_path_factory) -> Path:
    from cellfate_gpu.datasets import synthetic_atlas

    path = tmp_path_factory.mktemp("cli") / "atlas.h5ad"
    synthetic_atlas(n_cells=600, n_lineages=3, seed=0).write_h5ad(path)
    return path


@pytest.fixture
def input_copy(atlas_file, tmp_path) -> Path:
    path = tmp_path / "in.h5ad"
    path.write_bytes(atlas_file.read_bytes())
    return path


# ----------------------------------------------------------------------------- parsing
def test_parse_weighted_sum():
    terms = parse_kernel_spec(
        "pseudotime:time_key=dpt_pseudotime:weight=0.8:frac_to_keep=0.2 + connectivity:weight=0.2"
    )
    assert terms == [
        KernelTerm("pseudotime", 0.8, {"time_key": "dpt_pseudotime"}, {"frac_to_keep": 0.2}),
        KernelTerm("connectivity", 0.2, {}, {}),
    ]


def test_parse_values_are_typed():
    (term,) = parse_kernel_spec("velocity:backward=true:softmax_scale=none:similarity=cosine")
    assert term.init == {"backward": True}
    assert term.compute == {"softmax_scale": None, "similarity": "cosine"}


def test_options_are_routed_by_the_kernel_signatures():
    (term,) = parse_kernel_spec("cytotrace:layer=X:n_genes=50:frac_to_keep=0.4:time_key=ct")
    assert term.init == {"time_key": "ct"}
    assert term.compute == {"frac_to_keep": 0.4}
    assert term.prepare == {"layer": "X", "n_genes": 50}
    assert {"time_key", "frac_to_keep", "backward"} <= set(kernel_options("pseudotime"))
    assert "backend" not in kernel_options("pseudotime")  # --backend sets it


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("magic", "Unknown kernel 'magic'"),
        ("pseudotime:frac", "Malformed item 'frac'"),
        ("pseudotime + ", "Empty term"),
        ("pseudotime:frac_to_kep=0.9", r"Unknown option 'frac_to_kep'.*Did you mean 'frac_to_keep'\?.*Valid options:"),
        ("pseudotime:foo=1", r"Unknown option 'foo' for kernel 'pseudotime'.*frac_to_keep.*time_key"),
        ("connectivity:frac_to_keep=0.3", r"Unknown option 'frac_to_keep' for kernel 'connectivity'"),
        ("pseudotime:weight=0.9 + connectivity", r"weight to some terms but not to \['connectivity'\]"),
        ("pseudotime:weight=0 + connectivity:weight=1", "finite positive"),
        ("pseudotime:weight=-1 + connectivity:weight=1", "finite positive"),
        ("pseudotime:weight=nan + connectivity:weight=1", "finite positive"),
        ("pseudotime:weight=heavy + connectivity:weight=1", "not a number"),
        ("pseudotime:nu=1:nu=2", "given twice"),
    ],
)
def test_parse_errors_name_the_culprit(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_kernel_spec(spec)


def test_weights_are_used_as_given_and_renormalised(atlas_file):
    from cellfate_gpu.cli import _build_kernel

    adata = ad.read_h5ad(atlas_file)
    combined = _build_kernel(adata, parse_kernel_spec("pseudotime:weight=0.9 + connectivity:weight=0.1"), "scipy")
    scaled = _build_kernel(adata, parse_kernel_spec("pseudotime:weight=9 + connectivity:weight=1"), "scipy")
    equal = _build_kernel(adata, parse_kernel_spec("pseudotime + connectivity"), "scipy")
    Tp = _build_kernel(adata, parse_kernel_spec("pseudotime"), "scipy").transition_matrix
    Tc = _build_kernel(adata, parse_kernel_spec("connectivity"), "scipy").transition_matrix
    np.testing.assert_allclose(combined.transition_matrix.toarray(), (0.9 * Tp + 0.1 * Tc).toarray(), atol=1e-14)
    np.testing.assert_allclose(scaled.transition_matrix.toarray(), combined.transition_matrix.toarray(), atol=1e-14)
    np.testing.assert_allclose(equal.transition_matrix.toarray(), (0.5 * Tp + 0.5 * Tc).toarray(), atol=1e-14)


def test_run_refuses_a_bad_kernel_before_reading(tmp_path, capsys):
    code = main(["run", str(tmp_path / "absent.h5ad"), "--kernel", "pseudotime:foo=1", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "Unknown option 'foo'" in capsys.readouterr().err


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "scipy" in out and "available" in out


# ----------------------------------------------------------------------------- run end to end
def test_run_writes_a_complete_reloadable_output(input_copy, tmp_path):
    from cellfate_gpu.estimators import GPCCA

    before = _digest(input_copy)
    out = tmp_path / "out.h5ad"
    assert main(["run", str(input_copy), *KERNEL, *RUN, "--out", str(out)]) == 0
    assert _digest(input_copy) == before
    assert _leftovers(tmp_path) == []
    result = ad.read_h5ad(out)
    assert "T_fwd" in result.obsp and "T_fwd_params" in result.uns
    T = result.obsp["T_fwd"]
    np.testing.assert_allclose(np.asarray(T.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    g = GPCCA.from_adata(result)
    assert sp.issparse(g.transition_matrix) and g.transition_matrix.shape == (600, 600)
    names = list(g.terminal_states.cat.categories)
    assert len(names) == 3
    F = np.asarray(g.fate_probabilities)
    assert F.shape == (600, 3) and np.all(F >= -1e-12) and np.all(F <= 1 + 1e-12)
    np.testing.assert_allclose(F.sum(axis=1), 1.0, atol=1e-10)
    # the reloaded estimator can go on: recompute the fates from the stored T and terminal states
    g.compute_fate_probabilities()
    np.testing.assert_allclose(np.asarray(g.fate_probabilities), F, atol=1e-8)


def test_out_equal_to_input_replaces_it_only_with_the_complete_output(input_copy):
    original = ad.read_h5ad(input_copy)
    assert main(["run", str(input_copy), *KERNEL, *RUN, "--out", str(input_copy)]) == 0
    result = ad.read_h5ad(input_copy)
    assert "T_fwd" in result.obsp and "term_states_fwd" in result.obs
    np.testing.assert_array_equal(result.obs_names, original.obs_names)
    np.testing.assert_array_equal(result.obs["pseudotime"], original.obs["pseudotime"])
    assert _leftovers(input_copy.parent) == []


def test_failing_pipeline_leaves_the_input_and_no_output(input_copy, tmp_path):
    before = _digest(input_copy)
    with pytest.raises(Exception, match=r"time_key|nonexistent"):
        main(["run", str(input_copy), "--kernel", "pseudotime:time_key=nonexistent", *RUN, "--out", str(input_copy)])
    assert _digest(input_copy) == before
    assert _leftovers(tmp_path) == []


def test_bad_out_directory_is_refused_before_the_pipeline(input_copy, tmp_path, capsys):
    code = main(["run", str(input_copy), *KERNEL, *RUN, "--out", str(tmp_path / "missing" / "out.h5ad")])
    captured = capsys.readouterr()
    assert code == 2
    assert "does not exist" in captured.err and "missing" in captured.err
    assert "Kernel" not in captured.out  # nothing was computed
    assert main(["run", str(input_copy), *KERNEL, *RUN, "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_read_only_out_directory_is_refused(input_copy, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert main(["run", str(input_copy), *KERNEL, *RUN, "--out", str(folder / "o.h5ad")]) == 2
    finally:
        folder.chmod(0o700)
    assert "Cannot write" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not an h5ad file\n" * 10, b"\x89HDF\r\n\x1a\n" + b"\0" * 100],
    ids=["empty", "text", "truncated-hdf5"],
)
def test_garbage_input_names_the_file(tmp_path, capsys, content):
    bad = tmp_path / "garbage.h5ad"
    bad.write_bytes(content)
    assert main(["run", str(bad), *KERNEL, *RUN, "--out", str(tmp_path / "o.h5ad")]) == 2
    err = capsys.readouterr().err
    assert "garbage.h5ad" in err and "Cannot read" in err
    assert bad.read_bytes() == content
    assert not (tmp_path / "o.h5ad").exists() and _leftovers(tmp_path) == []


def test_missing_input_names_the_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.h5ad"), *RUN, "--out", str(tmp_path / "o.h5ad")]) == 2
    assert "nope.h5ad" in capsys.readouterr().err and _leftovers(tmp_path) == []


@pytest.mark.parametrize(("terminal", "match"), [("top_n:x", "not an integer"), ("top_n:0", "at least 1")])
def test_bad_terminal_is_refused(input_copy, tmp_path, capsys, terminal, match):
    args = ["run", str(input_copy), *KERNEL, "--terminal", terminal, "--out", str(tmp_path / "o.h5ad")]
    assert main(args) == 2
    assert match in capsys.readouterr().err


# ----------------------------------------------------------------------------- pandas string dtypes
def _with_nullable_strings(src: Path, dst: Path) -> None:
    """What anndata 0.13 + pandas 3 write: string index/columns stored as nullable-string-array."""
    adata = ad.read_h5ad(src)
    adata.obs_names = pd.Index([f"cell-{i}" for i in range(adata.n_obs)], dtype="string")
    adata.var_names = pd.Index(list(adata.var_names), dtype="string")
    adata.obs["batch"] = pd.array(["a", None] * (adata.n_obs // 2), dtype="string")
    adata.obs["donor"] = pd.array(["d1", "d2", "d3"] * (adata.n_obs // 3), dtype="string")
    adata.obs["clusters"] = pd.Categorical(pd.array(adata.obs["clusters"].astype(str), dtype="string"), categories=None)
    with ad.settings.override(allow_write_nullable_strings=True):
        adata.write_h5ad(dst)


def test_nullable_string_input_can_be_written_back(input_copy, tmp_path):
    fancy = tmp_path / "pandas3.h5ad"
    _with_nullable_strings(input_copy, fancy)
    reread = ad.read_h5ad(fancy)
    assert isinstance(reread.obs_names.dtype, pd.StringDtype)  # the case that used to fail
    with pytest.raises(RuntimeError, match="allow_write_nullable_strings"):
        reread.write_h5ad(tmp_path / "plain_write.h5ad")
    out = tmp_path / "out.h5ad"
    assert main(["run", str(fancy), *KERNEL, *RUN, "--out", str(out)]) == 0
    result = ad.read_h5ad(out)
    assert list(result.obs_names[:2]) == ["cell-0", "cell-1"]
    assert result.obs["batch"].isna().sum() == reread.n_obs // 2  # missing values stay missing
    assert list(result.obs["donor"][:3]) == ["d1", "d2", "d3"]
    assert "term_states_fwd" in result.obs and "T_fwd" in result.obsp


def test_make_h5ad_writable_converts_every_string_dtype(tmp_path):
    adata = ad.AnnData(np.ones((4, 2)))
    adata.obs_names = pd.Index(list("abcd"), dtype="string")
    adata.var_names = pd.Index(["g1", "g2"], dtype="string")
    adata.obs["s"] = pd.array(["x", "y", "x", "z"], dtype="string")
    adata.obs["m"] = pd.array(["x", None, "x", "z"], dtype="string")
    adata.obs["c"] = pd.Categorical(pd.array(["p", "q", "p", "q"], dtype="string"))
    adata.obsm["frame"] = pd.DataFrame({"k": pd.array(list("wxyz"), dtype="string")}, index=adata.obs_names)
    adata.uns["table"] = pd.DataFrame({"k": pd.array(["u", "v"], dtype="string")})
    make_h5ad_writable(adata)
    assert adata.obs_names.dtype == object and adata.var_names.dtype == object
    assert adata.obs["s"].dtype == object and list(adata.obs["s"]) == ["x", "y", "x", "z"]
    assert isinstance(adata.obs["m"].dtype, pd.CategoricalDtype) and adata.obs["m"].isna().tolist() == [0, 1, 0, 0]
    assert adata.obs["c"].cat.categories.dtype == object
    adata.write_h5ad(tmp_path / "ok.h5ad")  # without allow_write_nullable_strings
    back = ad.read_h5ad(tmp_path / "ok.h5ad")
    assert list(back.obs_names) == list("abcd") and list(back.obsm["frame"]["k"]) == list("wxyz")


# ----------------------------------------------------------------------------- interrupted runs (SIGTERM)
_INTERRUPT_DURING_WRITE = textwrap.dedent(
    """
    import os, signal, sys, time
    import anndata as ad
    original = ad.AnnData.write_h5ad

    def write_then_die(self, path, *args, **kwargs):
        original(self, path, *args, **kwargs)
        with open(path, "r+b") as fh:  # as if the process were killed half-way through the write
            fh.truncate(os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)  # the handler raises before this ends

    ad.AnnData.write_h5ad = write_then_die
    from cellfate_gpu.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _cli(args: list[str], *, script: str | None = None, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "cellfate_gpu.cli", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_LOCAL"))}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


@pytest.mark.parametrize("target", ["new", "existing", "input"])
def test_sigterm_during_the_write_leaves_no_partial_file(input_copy, tmp_path, target):
    out = {"new": tmp_path / "out.h5ad", "existing": tmp_path / "old.h5ad", "input": input_copy}[target]
    if target == "existing":
        out.write_bytes(input_copy.read_bytes())
    before_in, before_out = _digest(input_copy), _digest(out) if out.exists() else None
    proc = _cli(["run", str(input_copy), *KERNEL, *RUN, "--out", str(out)], script=_INTERRUPT_DURING_WRITE)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert _digest(input_copy) == before_in
    if before_out is None:
        assert not out.exists()
    else:
        assert _digest(out) == before_out  # the previous file is still there, whole
        ad.read_h5ad(out)
    assert _leftovers(tmp_path) == []


def test_sigterm_at_any_moment_never_leaves_a_truncated_output(input_copy, tmp_path):
    """Kill a real run as soon as it starts writing; the output is then complete or absent, never partial."""
    out = tmp_path / "out.h5ad"
    before = _digest(input_copy)
    proc = _cli(["run", str(input_copy), *KERNEL, *RUN, "--out", str(out)])
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        partial = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
        if any(p.exists() and p.stat().st_size > 0 for p in partial):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.001)
    proc.communicate(timeout=300)
    assert proc.returncode in (0, 128 + signal.SIGTERM, -signal.SIGTERM)
    if out.exists():
        assert proc.returncode == 0
        assert "T_fwd" in ad.read_h5ad(out).obsp
    assert _digest(input_copy) == before
    assert _leftovers(tmp_path) == []
