"""`harness study`: every method searched with one budget, selected at matched utility, confirmed on fresh seeds."""
