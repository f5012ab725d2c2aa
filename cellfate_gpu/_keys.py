"""Every AnnData key, in one place (CellRank 2 layout, DESIGN.md §5).

``direction`` is ``"fwd"`` or ``"bwd"``; functions take ``backward: bool`` like CellRank.
"""

from __future__ import annotations

__all__ = [
    "direction",
    "transition_matrix",
    "transition_params",
    "eigendecomposition",
    "schur_vectors",
    "schur_matrix",
    "macrostates",
    "macrostates_memberships",
    "states_memberships",
    "colors",
    "coarse",
    "terminal_states",
    "initial_states",
    "probs",
    "fate_probabilities",
    "absorption_times",
    "priming_degree",
    "lineage_drivers",
    "names",
]


def direction(backward: bool) -> str:
    """``"bwd"`` if ``backward`` else ``"fwd"``."""
    return "bwd" if backward else "fwd"


def transition_matrix(backward: bool = False) -> str:
    """``obsp`` key of T: ``T_fwd`` / ``T_bwd``."""
    return f"T_{direction(backward)}"


def transition_params(key: str) -> str:
    """``uns`` key of the kernel parameters stored beside ``obsp[key]``."""
    return f"{key}_params"


def eigendecomposition(backward: bool = False) -> str:
    """``uns`` key of the eigendecomposition dict."""
    return f"eigendecomposition_{direction(backward)}"


def schur_vectors(backward: bool = False) -> str:
    """``obsm`` key of the Schur vectors."""
    return f"schur_vectors_{direction(backward)}"


def schur_matrix(backward: bool = False) -> str:
    """``uns`` key of the Schur matrix R."""
    return f"schur_matrix_{direction(backward)}"


def macrostates(backward: bool = False) -> str:
    """``obs`` key of the macrostate assignment."""
    return f"macrostates_{direction(backward)}"


def macrostates_memberships(backward: bool = False) -> str:
    """``obsm`` key of the macrostate memberships."""
    return f"{macrostates(backward)}_memberships"


def states_memberships(key: str) -> str:
    """``obsm`` key of the memberships of the states in ``obs[key]`` (``term_states_fwd_memberships``)."""
    return f"{key}_memberships"


def colors(key: str) -> str:
    """``uns`` key of the colours of categorical ``obs[key]``."""
    return f"{key}_colors"


def names(key: str) -> str:
    """``uns`` key of the names stored beside an ``obsm[key]`` array (lineage names)."""
    return f"{key}_names"


def coarse(backward: bool = False) -> str:
    """``uns`` key of the coarse-grained T (a DataFrame-like dict)."""
    return f"coarse_{direction(backward)}"


def terminal_states(backward: bool = False) -> str:
    """``obs`` key of the terminal states (``term_states_fwd``)."""
    return f"term_states_{direction(backward)}"


def initial_states(backward: bool = False) -> str:
    """``obs`` key of the initial states (``init_states_fwd``)."""
    return f"init_states_{direction(backward)}"


def probs(key: str) -> str:
    """``obs`` key of the per-cell state probabilities beside ``obs[key]``."""
    return f"{key}_probs"


def fate_probabilities(backward: bool = False) -> str:
    """``obsm`` key of the fate probabilities (``lineages_fwd``)."""
    return f"lineages_{direction(backward)}"


def absorption_times(backward: bool = False) -> str:
    """``obsm`` key of the absorption times."""
    return f"absorption_times_{direction(backward)}"


def priming_degree(backward: bool = False) -> str:
    """``obs`` key of the lineage priming degree."""
    return f"priming_degree_{direction(backward)}"


def lineage_drivers(backward: bool = False) -> str:
    """``varm`` key of the lineage drivers (``terminal_lineage_drivers`` / ``initial_lineage_drivers``)."""
    return "initial_lineage_drivers" if backward else "terminal_lineage_drivers"
