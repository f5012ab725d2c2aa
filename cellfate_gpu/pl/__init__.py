"""Plots (host side, matplotlib): what is drawn is moved to the host explicitly first."""

from cellfate_gpu.pl._aggregate import aggregate_fate_probabilities as aggregate_fate_probabilities
from cellfate_gpu.pl._aggregate import log_odds as log_odds
from cellfate_gpu.pl._circular import circular_projection as circular_projection
from cellfate_gpu.pl._drivers import lineage_drivers as lineage_drivers
from cellfate_gpu.pl._fate import fate_probabilities as fate_probabilities
from cellfate_gpu.pl._macrostates import coarse_T as coarse_T
from cellfate_gpu.pl._macrostates import macrostates as macrostates
from cellfate_gpu.pl._random_walks import plot_random_walks as plot_random_walks
from cellfate_gpu.pl._spectrum import spectrum as spectrum
from cellfate_gpu.pl._trends import cluster_trends as cluster_trends
from cellfate_gpu.pl._trends import gene_trends as gene_trends
from cellfate_gpu.pl._trends import heatmap as heatmap

__all__ = [
    "aggregate_fate_probabilities",
    "circular_projection",
    "cluster_trends",
    "coarse_T",
    "fate_probabilities",
    "gene_trends",
    "heatmap",
    "lineage_drivers",
    "log_odds",
    "macrostates",
    "plot_random_walks",
    "spectrum",
]
