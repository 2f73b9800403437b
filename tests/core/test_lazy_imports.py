"""transformers loads its generation utilities without importing scikit-learn's metrics once harness is imported,
and assisted decoding's `roc_curve` still works (harness.core.lazy_imports). Fresh processes: this one has long
imported both."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import numpy as np
import harness.models.text  # imports transformers' modeling utilities, as every worker that loads a model does
from transformers.generation import candidate_generator as cg
before = "sklearn.metrics" in sys.modules
labels, scores = np.array([0, 1, 1, 0, 1]), np.array([0.1, 0.8, 0.6, 0.3, 0.4])
ours = [a.tolist() for a in cg.roc_curve(labels, scores)]
from sklearn.metrics import roc_curve
print(json.dumps({"sklearn_before_first_call": before, "available": cg.is_sklearn_available(),
                  "same": ours == [a.tolist() for a in roc_curve(labels, scores)],
                  "source": "roc_curve" in __import__("inspect").getsource(cg)}))
"""


def test_generation_utilities_load_without_sklearn_and_roc_curve_still_works() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"sklearn_before_first_call": False, "available": True, "same": True, "source": True}


def test_without_harness_transformers_imports_it_as_before() -> None:
    """The check above is not vacuous: transformers alone imports scikit-learn's metrics with that module."""
    code = ("import sys; from transformers.generation import candidate_generator as cg; "
            "print('sklearn.metrics' in sys.modules, cg.roc_curve.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["True", "sklearn.metrics._ranking"]
