"""Any scikit-learn-style regressor as a trend model (CellRank's ``SKLearnModel``)."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from cellfate_gpu.models._base import BaseModel

__all__ = ["SKLearnModel"]


class SKLearnModel(BaseModel):
    """Wrap an object with ``fit(X, y[, sample_weight])`` and ``predict(X)``.

    Parameters
    ----------
    adata
        AnnData the model reads from.
    model
        The regressor (scikit-learn or anything with the same two methods).
    weight_name
        Name of the sample-weight argument of ``model.fit``; detected (``sample_weight`` or
        ``sample_weights``) when ``None``. If ``model.fit`` takes none, weights are not used and the
        log says so.
    ignore_raise
        Fit without weights instead of raising when no weight argument is found.
    """

    def __init__(self, adata: Any, model: Any, weight_name: str | None = None, ignore_raise: bool = False):
        super().__init__(adata, model=model)
        if not (callable(getattr(model, "fit", None)) and callable(getattr(model, "predict", None))):
            raise TypeError(f"model must have fit() and predict(); {type(model).__name__} has not.")
        params = inspect.signature(model.fit).parameters
        if weight_name is None:
            weight_name = next((p for p in ("sample_weight", "sample_weights") if p in params), None)
        if (
            weight_name is not None
            and weight_name not in params
            and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        ):
            raise ValueError(f"{type(model).__name__}.fit has no argument {weight_name!r}.")
        if weight_name is None and not ignore_raise:
            raise ValueError(
                f"{type(model).__name__}.fit takes no sample weights, so lineage weights cannot be used; "
                "pass weight_name= or ignore_raise=True to fit unweighted."
            )
        if weight_name is None:
            from cellfate_gpu._logging import warning

            warning("%s.fit takes no sample weights: fitting without lineage weights", type(model).__name__)
        self._weight_name = weight_name

    def fit(self, x: Any = None, y: Any = None, w: Any = None, **kwargs: Any) -> SKLearnModel:
        """``model.fit(x, y, **{weight_name: w})`` on the prepared (or given) data."""
        x, y, w = self._xyw(x, y, w)
        if self._weight_name is not None:
            kwargs[self._weight_name] = w
        self._model.fit(x[:, None], y, **kwargs)
        return self

    def predict(self, x_test: Any = None, key_added: str | None = "_x_test", **kwargs: Any) -> np.ndarray:
        """``model.predict`` at ``x_test``."""
        xt = self._test_points(x_test)
        return self._store_test(key_added, xt, np.asarray(self._model.predict(xt[:, None], **kwargs)).ravel())
