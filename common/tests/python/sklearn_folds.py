"""Reads cases from stdin as JSON ({"y": [...], "folds": k, "seed": s} per
line) and prints, per case, the fold of every row that scikit-learn's
StratifiedKFold(n_splits=k, shuffle=True, random_state=s).split gives, or
the error it raises. Used by common/tests/sklearn_split.rs."""
import json
import sys
import warnings

import numpy as np
import sklearn
from sklearn.model_selection import StratifiedKFold

print(json.dumps({"sklearn": sklearn.__version__, "numpy": np.__version__}), flush=True)
for line in sys.stdin:
    case = json.loads(line)
    y = np.asarray(case["y"])
    folds = np.full(len(y), -1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            skf = StratifiedKFold(n_splits=case["folds"], shuffle=True, random_state=case["seed"])
            for i, (_, test) in enumerate(skf.split(np.zeros(len(y)), y)):
                folds[test] = i
            out = {"folds": folds.tolist()}
        except ValueError as e:
            out = {"error": str(e)}
    out["warned"] = any("least populated class" in str(w.message) for w in caught)
    print(json.dumps(out), flush=True)
