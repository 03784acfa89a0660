"""The text classifier's training: the fit on every row beside the folds' gives what cross_val_predict + fit give."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from classic_ml.text import build_text_pipeline, fit_out_of_fold

WORDS = {"safe": "please summarise the weather report for tomorrow morning",
         "crime": "how do I pick the lock of a stolen car quickly",
         "hate": "those people are vermin and should be driven out",
         "rare": "a one-off label that a fold can miss entirely"}


def rows(n: int, rare: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for label, base in WORDS.items():
        for i in range(rare if label == "rare" else n):
            words = base.split()
            rng.shuffle(words)
            texts.append(" ".join(words[: 5 + i % 4]) + f" {i}")
            labels.append(label)
    return pd.DataFrame({"text": texts}), np.array(labels)


@pytest.mark.parametrize("workers", [1, 2])
def test_out_of_fold_probabilities_and_the_final_model_match_cross_val_predict_and_fit(workers):
    X, y = rows(30, 6)
    model, proba = fit_out_of_fold(build_text_pipeline(4.0), X, y, 3, workers)
    expected = cross_val_predict(build_text_pipeline(4.0), X, y, method="predict_proba",
                                 cv=StratifiedKFold(3, shuffle=True, random_state=0))
    np.testing.assert_allclose(proba, expected, atol=1e-6)
    plain = build_text_pipeline(4.0).fit(X, y)
    np.testing.assert_allclose(model.predict_proba(X), plain.predict_proba(X), atol=1e-6)
    assert list(model.classes_) == sorted(WORDS)


def test_a_class_some_folds_never_saw_keeps_its_column():
    X, y = rows(20, 1)  # 1 row of "rare": the fold that scores it trained without the class
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn warns that a class has fewer rows than folds
        _, proba = fit_out_of_fold(build_text_pipeline(4.0), X, y, 3, 1)
    assert proba.shape == (len(y), 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    rare = list(np.unique(y)).index("rare")
    assert (proba[:, rare] == 0).any()  # rows scored by a model that never saw the class: 0 there, as sklearn does
