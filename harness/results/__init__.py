"""The results contract (L1.5): the tables every run writes, the environment record, the run directory life cycle
and the one reader of a finished run."""
