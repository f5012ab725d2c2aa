"""Settings scoping, logging format and the backend registry's dispatch rules."""

import logging

import pytest

import cellfate_gpu as cf
from cellfate_gpu import _logging
from cellfate_gpu.backends import BackendUnavailableError, available_backends, get_backend


def test_using_restores_on_exit_and_on_error():
    before = (cf.settings.backend, cf.settings.dtype, cf.settings.verbosity)
    with cf.settings.using(backend="scipy", dtype="float32", verbosity="debug"):
        assert (cf.settings.backend, cf.settings.dtype.name, cf.settings.verbosity) == ("scipy", "float32", 3)
    assert (cf.settings.backend, cf.settings.dtype, cf.settings.verbosity) == before
    with pytest.raises(RuntimeError), cf.settings.using(verbosity=0):
        raise RuntimeError
    assert cf.settings.verbosity == before[2]


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("dtype", "int8", "dtype must be float32 or float64"),
        ("verbosity", 7, "verbosity must be between"),
        ("verbosity", "loud", "verbosity must be one of"),
        ("colour", "red", "Unknown setting 'colour'"),
    ],
)
def test_bad_settings_name_the_value(key, value, match):
    with pytest.raises(ValueError, match=match):
        with cf.settings.using(**{key: value}):
            pass


def test_env_backend_is_read(monkeypatch):
    from cellfate_gpu import _settings

    monkeypatch.setenv("CELLFATE_BACKEND", "JAX")
    assert _settings._initial().backend == "jax"


def test_timed_lines_in_cellrank_style(caplog):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    _logging.logger.addHandler(handler)
    try:
        with cf.settings.using(verbosity="info"), _logging.timed("Computing transition matrix based on pseudotime"):
            pass
    finally:
        _logging.logger.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert messages[0] == "Computing transition matrix based on pseudotime"
    assert messages[1].startswith("    Finish (") and messages[1].endswith("s)")


def test_registry_lists_every_backend_with_reason():
    reasons = available_backends()
    assert set(reasons) >= {"scipy", "cupy", "jax", "petsc"}
    assert reasons["scipy"] is None
    for name, reason in reasons.items():
        assert reason is None or (isinstance(reason, str) and reason), name


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="Unknown backend 'nope'"):
        get_backend("nope")


def test_unavailable_backend_raises_and_names_the_extra():
    reasons = available_backends()
    missing = [name for name in ("cupy", "jax", "petsc") if reasons.get(name)]
    if not missing:
        pytest.skip("every optional backend is available here")
    with pytest.raises(BackendUnavailableError, match=r"pip install 'cellfate_gpu\["):
        get_backend(missing[0])


def test_auto_without_gpu_or_mpi_is_scipy(monkeypatch):
    from cellfate_gpu import backends

    if available_backends().get("cupy") is None:
        pytest.skip("a GPU is usable here, auto picks cupy")
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE"):
        monkeypatch.delenv(var, raising=False)
    backends._auto_choice.cache_clear()
    try:
        assert get_backend("auto").name == "scipy"
    finally:
        backends._auto_choice.cache_clear()
