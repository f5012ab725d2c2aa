"""Legend placement with CellRank's vocabulary: a matplotlib location, or one outside the axes (``"... out"``).

CellRank's plots take ``legend_loc="upper right out"`` and the like: the legend sits outside the
data, against the named side. ``"right margin"`` (scanpy) means ``"center right out"``; ``None`` or
``"none"`` draws no legend.
"""

from __future__ import annotations

from typing import Any

__all__ = ["position_legend"]

_VERTICAL = {"upper": 1.0, "center": 0.5, "lower": 0.0}
_HORIZONTAL = {"left": 0.0, "center": 0.5, "right": 1.0}
_OPPOSITE = {"upper": "lower", "lower": "upper", "left": "right", "right": "left", "center": "center"}


def _outside(loc: str) -> tuple[str, tuple[float, float]]:
    """``(loc, bbox_to_anchor)`` that put the legend outside the axes for ``"<v> <h> out"``."""
    parts = loc.split()
    if len(parts) == 1:  # "right out" -> "center right out"
        parts = ["center", parts[0]]
    v, h = parts if len(parts) == 2 else ("", "")
    if v not in _VERTICAL or h not in _HORIZONTAL or (v, h) == ("center", "center"):
        raise ValueError(
            f"legend_loc={loc!r}: expected '<upper|center|lower> <left|center|right> out' "
            "(not 'center center out'), a matplotlib location, 'right margin' or None."
        )
    if h == "center":  # above or below the axes
        anchor = f"{_OPPOSITE[v]} center"
    else:  # beside the axes, aligned with the named height
        anchor = f"{v} {_OPPOSITE[h]}" if v != "center" else f"center {_OPPOSITE[h]}"
    return anchor, (_HORIZONTAL[h], _VERTICAL[v])


def position_legend(ax, legend_loc: str | None, **kwargs: Any):
    """Draw the legend of ``ax`` at ``legend_loc`` (see the module docstring); returns it or ``None``.

    Parameters
    ----------
    ax
        Axes whose labelled artists go into the legend (``kwargs`` may give ``handles``/``labels``).
    legend_loc
        ``"upper right out"`` etc., ``"right margin"``, a matplotlib location (inside the axes),
        ``None`` or ``"none"``.
    kwargs
        Passed to :meth:`matplotlib.axes.Axes.legend`.

    Raises
    ------
    ValueError
        An ``"... out"`` location that names no side.
    """
    if legend_loc in (None, "none"):
        return None
    kwargs.setdefault("frameon", False)
    if legend_loc == "right margin":
        legend_loc = "center right out"
    if legend_loc.endswith(" out"):
        loc, anchor = _outside(legend_loc[: -len(" out")])
        return ax.legend(loc=loc, bbox_to_anchor=anchor, borderaxespad=0.5, **kwargs)
    return ax.legend(loc=legend_loc, **kwargs)
