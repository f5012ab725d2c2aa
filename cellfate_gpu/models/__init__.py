"""Gene-trend models in CellRank's interface (``cellrank.models``), fitted for many genes at once."""

from cellfate_gpu.models._base import BaseModel as BaseModel
from cellfate_gpu.models._base import LineageDesign as LineageDesign
from cellfate_gpu.models._base import lineage_design as lineage_design
from cellfate_gpu.models._gam import GAM as GAM
from cellfate_gpu.models._sklearn import SKLearnModel as SKLearnModel
from cellfate_gpu.models._spline import Family as Family
from cellfate_gpu.models._spline import SplineBasis as SplineBasis
from cellfate_gpu.models._spline import SplineFit as SplineFit
from cellfate_gpu.models._spline import fit_splines as fit_splines
from cellfate_gpu.models._trends import LineageTrends as LineageTrends
from cellfate_gpu.models._trends import fit_trends as fit_trends

__all__ = [
    "GAM",
    "BaseModel",
    "Family",
    "LineageDesign",
    "LineageTrends",
    "SKLearnModel",
    "SplineBasis",
    "SplineFit",
    "fit_splines",
    "fit_trends",
    "lineage_design",
]
