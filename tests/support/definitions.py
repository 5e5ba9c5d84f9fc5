"""A small in-memory model definition for tests that need one but train nothing."""

from __future__ import annotations

from aipaas.modeldef import ModelDefinition, Uniform


def tiny_definition(**overrides: object) -> ModelDefinition:
    """Model ``m`` on dataset ``d``: features ``a``, ``b``, target ``y``; ``overrides`` win."""
    base: dict[str, object] = {
        "name": "m",
        "dataset": "d",
        "target": "y",
        "features": ("a", "b"),
        "build_estimator": lambda p: None,
        "search_space": {"x": Uniform(0, 1)},
    }
    return ModelDefinition(**{**base, **overrides})  # type: ignore[arg-type]
