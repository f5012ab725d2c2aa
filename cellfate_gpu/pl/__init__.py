"""Plots (host side, matplotlib): what is drawn is moved to the host explicitly first."""

from cellfate_gpu.pl._circular import circular_projection as circular_projection
from cellfate_gpu.pl._drivers import lineage_drivers as lineage_drivers
from cellfate_gpu.pl._estimator_plots import coarse_T as coarse_T
from cellfate_gpu.pl._estimator_plots import macrostates as macrostates
from cellfate_gpu.pl._estimator_plots import spectrum as spectrum
from cellfate_gpu.pl._fate import fate_probabilities as fate_probabilities
