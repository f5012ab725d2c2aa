"""Plots (host side, matplotlib): what is drawn is moved to the host explicitly first."""

from cellfate_gpu.pl._aggregate import aggregate_fate_probabilities as aggregate_fate_probabilities
from cellfate_gpu.pl._aggregate import log_odds as log_odds
from cellfate_gpu.pl._circular import circular_projection as circular_projection
from cellfate_gpu.pl._composition import macrostate_composition as macrostate_composition
from cellfate_gpu.pl._drivers import lineage_drivers as lineage_drivers
from cellfate_gpu.pl._drivers_correlation import lineage_drivers_correlation as lineage_drivers_correlation
from cellfate_gpu.pl._fate import fate_probabilities as fate_probabilities
from cellfate_gpu.pl._flow import single_flow as single_flow
from cellfate_gpu.pl._macrostates import coarse_T as coarse_T
from cellfate_gpu.pl._macrostates import macrostates as macrostates
from cellfate_gpu.pl._random_walks import plot_random_walks as plot_random_walks
from cellfate_gpu.pl._schur import schur_matrix as schur_matrix
from cellfate_gpu.pl._spectrum import spectrum as spectrum
from cellfate_gpu.pl._trends import cluster_trends as cluster_trends
from cellfate_gpu.pl._trends import gene_trends as gene_trends
from cellfate_gpu.pl._trends import heatmap as heatmap
from cellfate_gpu.pl._tsi import tsi as tsi

__all__ = [
    "aggregate_fate_probabilities",
    "circular_projection",
    "cluster_trends",
    "coarse_T",
    "fate_probabilities",
    "gene_trends",
    "heatmap",
    "lineage_drivers",
    "lineage_drivers_correlation",
    "log_odds",
    "macrostate_composition",
    "macrostates",
    "plot_random_walks",
    "schur_matrix",
    "single_flow",
    "spectrum",
    "tsi",
]
