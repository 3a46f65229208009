"""Studies: the whole protocol over several models (tune, grid, report) and their comparison, the
last stage, above the runner and the report."""
