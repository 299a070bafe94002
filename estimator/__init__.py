"""Pure numpy/scipy statistics for the background temperature T_bg (see docs/estimators.md)."""
