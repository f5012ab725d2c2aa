"""Sphinx configuration (MyST markdown, autodoc from numpydoc docstrings)."""

project = "cellfate_gpu"
author = "cellfate_gpu developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.autosummary", "sphinx.ext.napoleon"]
autosummary_generate = True
napoleon_numpy_docstring = True
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
html_theme = "alabaster"
