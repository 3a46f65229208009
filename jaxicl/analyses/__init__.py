"""Analyses beyond the paper's grid, run as extra cells of a run: task-specificity controls
(`controls`) and sensitivity to the order of the demonstrations (`order`)."""
