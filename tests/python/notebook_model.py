"""A teammate's notebook, as tests/imports.rs runs it: scikit-learn's own
StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=SEED) on the
`target` column of train.csv, a LogisticRegression on 8x8 greyscale
thumbnails per fold, and its predictions saved the ways notebooks save them:

  OUT/oof_fold{f}.csv   fold f's validation rows: index = train.csv row, class_0..
  OUT/test_fold{f}.npy  float32 probabilities of fold f's model on test.csv
  OUT/oof.npy           float64 probabilities for every train.csv row, file order
  OUT/test_mean.csv     class_0.. (no index), the fold models' mean on test.csv
  OUT/folds.npy         the fold of every train.csv row
  OUT/result.json       {"oof_accuracy": ...}

    python3 notebook_model.py DATA_DIR OUT FOLDS SEED [SIZE [MODEL]]

SIZE is the thumbnail side (default 8); MODEL is logreg (default), knn or
forest (bench/stacking-mnist.sh imports several as ensemble members).
"""
import csv
import json
import os
import sys

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

data, out, folds, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
size = int(sys.argv[5]) if len(sys.argv) > 5 else 8
kind = sys.argv[6] if len(sys.argv) > 6 else "logreg"
os.makedirs(out, exist_ok=True)
with open(os.path.join(data, "train.csv"), newline="") as f:
    train = list(csv.DictReader(f))
with open(os.path.join(data, "test.csv"), newline="") as f:
    test = list(csv.DictReader(f))
y = np.array([int(r["target"]) for r in train])
classes = int(y.max()) + 1


def pixels(paths):
    return np.stack(
        [np.asarray(Image.open(p).convert("L").resize((size, size)), dtype=np.float64).ravel() / 255.0 for p in paths]
    )


X = pixels([os.path.join(data, "train", r["image_path"]) for r in train])
X_test = pixels([os.path.join(data, "test", r["image_path"]) for r in test])


def write_csv(path, probs, index=None):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(([""] if index is not None else []) + [f"class_{c}" for c in range(classes)])
        for i, row in enumerate(probs):
            w.writerow(([int(index[i])] if index is not None else []) + [repr(float(v)) for v in row])


oof = np.zeros((len(y), classes))
test_mean = np.zeros((len(X_test), classes))
fold_of = np.full(len(y), -1)
skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
for f, (tr, val) in enumerate(skf.split(X, y)):
    if kind == "knn":
        from sklearn.neighbors import KNeighborsClassifier

        model = KNeighborsClassifier(n_neighbors=15, weights="distance").fit(X[tr], y[tr])
    elif kind == "forest":
        from sklearn.ensemble import RandomForestClassifier

        model = RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=2).fit(X[tr], y[tr])
    else:
        model = LogisticRegression(max_iter=300).fit(X[tr], y[tr])
    oof[val] = model.predict_proba(X[val])
    fold_of[val] = f
    p_test = model.predict_proba(X_test)
    test_mean += p_test / folds
    write_csv(os.path.join(out, f"oof_fold{f}.csv"), oof[val], index=val)
    np.save(os.path.join(out, f"test_fold{f}.npy"), p_test.astype(np.float32))
np.save(os.path.join(out, "oof.npy"), oof)
np.save(os.path.join(out, "folds.npy"), fold_of)
write_csv(os.path.join(out, "test_mean.csv"), test_mean)
accuracy = float((oof.argmax(axis=1) == y).mean())
with open(os.path.join(out, "result.json"), "w") as f:
    json.dump({"oof_accuracy": accuracy}, f)
print(json.dumps({"oof_accuracy": accuracy}))
