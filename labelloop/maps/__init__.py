"""Layer 4 (beside train): maps of a data set (settings, fitting and placing, caches on disk, the lasso, what the map shows)."""
