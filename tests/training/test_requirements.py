"""The pip requirements logged with a model: found from its classes, pinned, in milliseconds."""

from __future__ import annotations

import importlib.metadata

from lightgbm import LGBMClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from aipaas.training.requirements import pip_requirements


def _pinned(name: str) -> str:
    return f"{name}=={importlib.metadata.version(name)}"


def test_a_lightgbm_model_needs_its_library_and_what_its_sklearn_api_loads() -> None:
    assert pip_requirements(LGBMClassifier()) == sorted(
        _pinned(n) for n in ("lightgbm", "mlflow", "numpy", "pandas", "scikit-learn", "scipy")
    )


def test_a_pipeline_is_walked_and_skops_is_named_when_it_serialises() -> None:
    pipeline = make_pipeline(TfidfVectorizer(), LogisticRegression())
    found = pip_requirements(pipeline, skops=True)
    assert _pinned("skops") in found and _pinned("scikit-learn") in found
    assert not any(r.startswith(("lightgbm", "pytest", "rich", "aipaas")) for r in found)
    assert "skops" not in " ".join(pip_requirements(pipeline))


def test_a_step_from_another_library_inside_a_pipeline_is_found() -> None:
    pipeline = make_pipeline(TfidfVectorizer(), LGBMClassifier())
    assert _pinned("lightgbm") in pip_requirements(pipeline, skops=True)


def test_an_object_without_the_estimator_protocol_needs_only_the_loaders() -> None:
    class Plain:
        def predict(self, x: object) -> object:
            return x

    assert [r.split("==")[0] for r in pip_requirements(Plain())] == ["mlflow", "numpy", "pandas"]
