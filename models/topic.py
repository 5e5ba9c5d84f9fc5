"""The text demo model: which topic is a quote about?

A quote from Debian's ``fortunes`` package (the ``quotes`` dataset: the
computers, people, politics and science categories, labelled with their
category) goes in as one string, ``text``, so the whole request body is
``{"text": "..."}``; out comes one of the four topics with its probabilities.
The estimator takes a one-column DataFrame: TF-IDF of word n-grams over the
``text`` column, then a multinomial logistic regression (probabilities come
with it, and every part is a scikit-learn type skops saves safely).

Copy this file for a text model of your own: a single feature named ``text``
and a pipeline that starts with a ``ColumnTransformer`` over that column.
"""

from __future__ import annotations

from typing import Any

from aipaas.modeldef import Choice, DriftPolicy, Gates, IntRange, LogUniform, ModelDefinition

TOPICS = ("computers", "people", "politics", "science")


def build_estimator(params: dict[str, Any]) -> Any:
    """TF-IDF over ``text`` then logistic regression; ``ngram_max`` 2 adds word pairs."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    p = {"C": 10.0, "ngram_max": 1, "min_df": 1, "sublinear_tf": True, **params}
    tfidf = TfidfVectorizer(
        lowercase=True,
        ngram_range=(1, int(p["ngram_max"])),
        min_df=int(p["min_df"]),
        sublinear_tf=bool(p["sublinear_tf"]),
        strip_accents="unicode",
    )
    return Pipeline(
        [
            ("features", ColumnTransformer([("text", tfidf, "text")])),
            ("classify", LogisticRegression(C=float(p["C"]), max_iter=2000)),
        ]
    )


definition = ModelDefinition(
    name="topic",
    dataset="quotes",
    target="topic",
    features=("text",),
    build_estimator=build_estimator,
    search_space={
        "C": LogUniform(1.0, 50.0),
        "ngram_max": Choice((1, 2)),
        "min_df": IntRange(1, 3),
        "sublinear_tf": Choice((True, False)),
    },
    task="classification",
    metric="f1",
    mode="max",
    metrics=("f1", "accuracy", "roc_auc", "precision", "recall"),
    gates=Gates(
        # Measured on the 726-quote holdout: f1 (macro) 0.69, accuracy 0.71,
        # roc_auc 0.90 at C=10; the floors leave room for a new data version.
        min_metrics={"f1": 0.6, "accuracy": 0.62, "roc_auc": 0.85},
        champion_tolerance=0.02,
        p99_latency_ms=50.0,
        require_suite_passed=True,
        require_signature_compatible=True,
    ),
    # Text drift is judged on text.length, text.tokens, text.oov and text.empty.
    # Held-out quotes show an out-of-vocabulary excess of at most 0.012, Star
    # Trek quotes 0.10: 0.05 tells them apart. With one feature, that feature
    # drifting is enough (max_drifting_features applies to models with more).
    drift=DriftPolicy(
        default_threshold=0.15,
        feature_thresholds={"text.oov": 0.05},
        max_drifting_features=3,
        max_accuracy_drop=0.1,
        min_rows=100,
    ),
    # The quotes are public text, so served inputs are kept with their
    # predictions and labelled ones become training data when drift retrains
    # (the demo's Linux and Perl quotes). A model of personal text keeps this
    # off: only each input's keyed hash is stored, and a retrain can then
    # learn nothing new from feedback.
    log_inputs=True,
    description=(
        "TF-IDF + logistic regression: the topic of a quote from Debian's fortunes "
        "(computers, people, politics or science)."
    ),
    intended_use="A demonstration of a text model on the platform: tagging short English quotes.",
    limits=(
        "Four topics only; any other text is forced into one of them.",
        "Quotes from one Debian package, mostly old and English: other registers "
        "(chat, news) read as out-of-vocabulary drift.",
    ),
)
