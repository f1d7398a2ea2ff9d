"""Classic baselines on the registered sentiment sets: TF-IDF + logistic regression (scikit-learn).

    .venv/bin/python benchmarks/baselines.py

Prints one JSON object: test accuracy, macro F1 and train seconds per set. Chinese uses character
1-3-grams (no word segmentation needed), English word 1-2-grams. The LSTM baseline is trained with
`lmforge finetune --model.name=lstm` (see docs/results.md).
"""

from __future__ import annotations

import json
import os
import platform
import time

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from lmforge.data.labelled import load_labelled

SETS = {
    "chn-reviews": dict(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True),
    "movie-snippets": dict(analyzer="word", ngram_range=(1, 2), min_df=1, sublinear_tf=True),
}


def run(name: str, vec_kw: dict) -> dict:
    train, test = load_labelled(name, "train"), load_labelled(name, "test")
    t0 = time.perf_counter()
    vec = TfidfVectorizer(**vec_kw)
    clf = LogisticRegression(max_iter=2000, C=4.0)
    clf.fit(vec.fit_transform(train.texts), train.labels)
    seconds = time.perf_counter() - t0
    pred = clf.predict(vec.transform(test.texts))
    return {"test_accuracy": round(accuracy_score(test.labels, pred), 4),
            "test_macro_f1": round(f1_score(test.labels, pred, average="macro"), 4),
            "train_seconds": round(seconds, 2), "train_examples": len(train), "test_examples": len(test)}


if __name__ == "__main__":
    results = {name: run(name, kw) for name, kw in SETS.items()}
    print(json.dumps({"benchmark": "tfidf-logreg", "results": results, "threads": os.cpu_count(),
                      "cpu": platform.processor() or platform.machine()}, indent=2))
