"""Model definitions, one file per model; see ``aipaas.modeldef``."""
