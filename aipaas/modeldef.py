"""Model definitions: the product logic a team writes, one file per model.

A definition lives in ``models/<name>.py`` and exposes ``definition``, a
:class:`ModelDefinition`. It names the dataset, target and features, builds the
estimator from a parameter dict, gives the search space, the metrics, the
promotion gates and the drift policy. Adding a model is adding one definition,
one suite in ``expectations/`` and its data: no platform code changes.

The search space is written with this module's small vocabulary
(:class:`Uniform`, :class:`LogUniform`, :class:`IntRange`, :class:`Choice`) so
that definitions do not import Ray; ``aipaas.training.tune`` translates it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aipaas.exceptions import ConfigurationError, ModelNotFoundError


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int  # inclusive


@dataclass(frozen=True)
class Choice:
    options: tuple[Any, ...]


SearchDimension = Uniform | LogUniform | IntRange | Choice


@dataclass(frozen=True)
class Gates:
    """Promotion policy: what a challenger must show to become champion."""

    # Absolute floors (or ceilings for metrics where lower is better) on holdout metrics.
    min_metrics: Mapping[str, float] = field(default_factory=dict)
    max_metrics: Mapping[str, float] = field(default_factory=dict)
    # The challenger may be at most this much worse than the champion on
    # ``ModelDefinition.metric``, both scored on the same holdout.
    champion_tolerance: float = 0.01
    # p99 latency of a one-row predict, milliseconds.
    p99_latency_ms: float = 50.0
    require_suite_passed: bool = True
    require_signature_compatible: bool = True
    # Pause the promote flow for a person's approval in the Prefect UI.
    require_approval: bool = False


@dataclass(frozen=True)
class DriftPolicy:
    """When served traffic has moved enough to retrain."""

    # Per-feature drift score threshold; a feature above it is "drifting".
    default_threshold: float = 0.15
    feature_thresholds: Mapping[str, float] = field(default_factory=dict)
    # Retrain when at least this many features drift (or every feature, when
    # the model has fewer: a one-feature text model retrains when it drifts) ...
    max_drifting_features: int = 3
    # ... or accuracy on labelled feedback drops this much below the holdout.
    max_accuracy_drop: float = 0.05
    # Fewer served rows than this: no decision.
    min_rows: int = 100
    # Accuracy is judged on recent labels only: the last this many labelled
    # rows of the champion ...
    accuracy_window_rows: int = 500
    # ... labelled within this many hours (None: of any age). Labels a retrain
    # already learnt from never count, whatever the window.
    accuracy_window_hours: float | None = 168.0

    def __post_init__(self) -> None:
        if self.accuracy_window_rows < 1:
            raise ConfigurationError(
                f"drift policy: accuracy_window_rows must be at least 1, "
                f"not {self.accuracy_window_rows}"
            )
        if self.accuracy_window_hours is not None and not self.accuracy_window_hours > 0:
            raise ConfigurationError(
                f"drift policy: accuracy_window_hours must be positive (or None for any age), "
                f"not {self.accuracy_window_hours}"
            )


@dataclass(frozen=True)
class ModelDefinition:
    name: str
    dataset: str
    target: str
    features: tuple[str, ...]
    build_estimator: Callable[[dict[str, Any]], Any]
    search_space: Mapping[str, SearchDimension]
    task: Literal["classification", "regression"] = "classification"
    # The metric the search optimises and promotion compares.
    metric: str = "roc_auc"
    mode: Literal["max", "min"] = "max"
    metrics: tuple[str, ...] = ("roc_auc", "accuracy", "f1")
    gates: Gates = Gates()
    drift: DriftPolicy = DriftPolicy()
    # Store raw inputs in the audit trail (off: only their keyed hash).
    log_inputs: bool = False
    description: str = ""
    # For the model card: what the model is for (and not for), and what is
    # known to go wrong with it.
    intended_use: str = ""
    limits: tuple[str, ...] = ()

    @property
    def is_text(self) -> bool:
        """A text model takes exactly one string column named ``text``."""
        return tuple(self.features) == ("text",)


def load_definition(name: str, models_dir: Path) -> ModelDefinition:
    """Import ``models_dir/<name>.py`` and return its ``definition``."""
    path = models_dir / f"{name}.py"
    if not path.is_file():
        known = ", ".join(list_definitions(models_dir)) or "none"
        raise ModelNotFoundError(f"unknown model {name!r}: no {path} (known models: {known})")
    spec = importlib.util.spec_from_file_location(f"aipaas_models.{name}", path)
    if spec is None or spec.loader is None:
        raise ConfigurationError(f"cannot import model definition {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    definition = getattr(module, "definition", None)
    if not isinstance(definition, ModelDefinition):
        raise ConfigurationError(f"{path} must define `definition = ModelDefinition(...)`")
    if definition.name != name:
        raise ConfigurationError(f"{path} defines model {definition.name!r}, expected {name!r}")
    return definition


def list_definitions(models_dir: Path) -> list[str]:
    return sorted(p.stem for p in models_dir.glob("*.py") if not p.stem.startswith("_"))
