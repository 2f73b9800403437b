"""Matched-utility selection (pure pandas): per method, the best forget score among trials inside the utility budget.

A trial is inside the budget when it did not diverge, its forget score is finite and its utility is at least
(1 - delta) x the target model's. A method with no trial inside keeps its highest-utility trial as the one
confirmed, flagged `inside_budget` False (reported as such, never dropped); a method whose trials all diverged has
none selected.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def utility_budget(target_utility: float, delta: float) -> float:
    """The smallest utility inside the budget: (1 - delta) x the target model's."""
    return (1.0 - delta) * target_utility


def select_trials(trials: pd.DataFrame, target_utility: float, delta: float, mode: str) -> pd.DataFrame:
    """`trials` (columns `method`, `trial_id`, `forget_score`, `utility`, `diverged`) with `inside_budget` and
    `selected` added: per method exactly one selected trial (the best forget score inside the budget, ties to
    the higher utility; else the highest utility, flagged outside), none when every trial diverged."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be max or min, got {mode!r}")
    out = trials.copy()
    finite = np.isfinite(out["forget_score"].astype(float)) & np.isfinite(out["utility"].astype(float))
    ok = finite & ~out["diverged"].astype(bool)
    out["inside_budget"] = ok & (out["utility"].astype(float) >= utility_budget(target_utility, delta))
    out["selected"] = False
    for _, group in out.groupby("method", sort=False):
        inside = group[out.loc[group.index, "inside_budget"]]
        if not inside.empty:
            best = inside.sort_values(["forget_score", "utility"], ascending=[mode == "min", False], kind="stable")
        else:
            usable = group[ok.loc[group.index]]
            if usable.empty:
                continue
            best = usable.sort_values("utility", ascending=False, kind="stable")
        out.loc[best.index[0], "selected"] = True
    return out


def selected_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """The selected trial of each method (a `select_trials` frame), in the methods' order."""
    return trials[trials["selected"]].reset_index(drop=True)


def check_equal_budgets(frame: pd.DataFrame) -> None:
    """ValueError unless every method of a study's trial rows (`kind` trial) has the same number of trials, the
    same steps per trial and the same search seeds (columns `n_trials`, `steps_budget`, `search_seeds`)."""
    trials = frame[frame["kind"] == "trial"]
    per_method = trials.groupby("method", sort=False).agg(
        trials=("trial_id", "nunique"), n_trials=("n_trials", "first"), steps=("steps_budget", "first"),
        steps_n=("steps_budget", "nunique"), seeds=("search_seeds", "first"), seeds_n=("search_seeds", "nunique"))
    if per_method.empty:
        return
    problems = []
    for column in ("trials", "n_trials", "steps", "seeds"):
        if per_method[column].nunique() > 1:
            problems.append(f"{column} differ: {per_method[column].to_dict()}")
    if (per_method["steps_n"] > 1).any() or (per_method["seeds_n"] > 1).any():
        problems.append("a method's trials differ in steps or search seeds")
    if (per_method["trials"] != per_method["n_trials"]).any():
        problems.append(f"trials run differ from the budget: {per_method[['trials', 'n_trials']].to_dict()}")
    if problems:
        raise ValueError("unequal search budgets: " + "; ".join(problems))


def check_disjoint_seeds(search_seeds: list[int], confirm_seeds: list[int]) -> None:
    """ValueError when a confirmation seed is also a search seed."""
    shared = sorted(set(search_seeds) & set(confirm_seeds))
    if shared:
        raise ValueError(f"confirmation seeds must be fresh; {shared} were search seeds")
