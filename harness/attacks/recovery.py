"""The recovery score of an attack: the share of what unlearning removed that the attack brings back.

For the benchmark's recovery metric m on the forget data (TOFU: forget probability; vision: UA, i.e. one
minus forget accuracy), a model u unlearned from the target t, and the attacked model A(u), all scored on the
same examples:

    recovery = (m(A(u)) - m(u)) / (m(t) - m(u))

0: the attack brings nothing back; 1: it restores the target's level; above 1: beyond the target; below 0:
the attack removes more. Undefined (NaN) when unlearning removed nothing (m(t) = m(u)). The score is
invariant to an affine change of m, so accuracy and 1 - accuracy give the same recovery.

Which u, t and examples: weight attacks (quantize) and prompt attacks (rephrase) compare with the unattacked
u and t on the full forget split; relearn compares with u and t at step 0 on the held-back forget examples
(the same merged weights, before any fine-tuning step). The score is computed per seed, each seed against
its own reference t, and reported as the mean with a 95% interval over the seeds. On `retain` (never saw the
forget data) the same formula measures what the attack alone teaches; on `target` it is undefined.
"""

from __future__ import annotations

import math


def recovery_score(attacked: float, unlearned: float, target: float, eps: float = 1e-12) -> float:
    """`(attacked - unlearned) / (target - unlearned)`; NaN when `|target - unlearned| <= eps`."""
    gap = target - unlearned
    if not all(map(math.isfinite, (attacked, unlearned, target))) or abs(gap) <= eps:
        return math.nan
    return (attacked - unlearned) / gap
