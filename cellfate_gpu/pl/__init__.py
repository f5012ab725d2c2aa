"""Plots (host side, matplotlib): what is drawn is moved to the host explicitly first."""

from cellfate_gpu.pl._circular import circular_projection as circular_projection
from cellfate_gpu.pl._drivers import lineage_drivers as lineage_drivers
from cellfate_gpu.pl._fate import fate_probabilities as fate_probabilities

# Estimator plots live in modules owned by the estimator engineers; import what is there.
try:
    from cellfate_gpu.pl._spectrum import spectrum as spectrum
except ImportError:
    from cellfate_gpu.pl._estimator_plots import spectrum as spectrum
try:
    from cellfate_gpu.pl._macrostates import macrostates as macrostates
except ImportError:
    from cellfate_gpu.pl._estimator_plots import macrostates as macrostates
try:
    from cellfate_gpu.pl._coarse import coarse_T as coarse_T
except ImportError:
    from cellfate_gpu.pl._estimator_plots import coarse_T as coarse_T

__all__ = ["circular_projection", "coarse_T", "fate_probabilities", "lineage_drivers", "macrostates", "spectrum"]
