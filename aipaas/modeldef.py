"""Model definitions: the product logic a team writes, one file per model.

A definition lives in ``models/<name>.py`` and exposes ``definition``, a
:class:`ModelDefinition`. It names the dataset, target and features, builds the
estimator from a parameter dict, gives the search space, the metrics, the
promotion gates and the drift policy. Adding a model is adding one definition,
one suite in ``expectations/`` and its data: no platform code changes.

The search space is written with this module's small vocabulary
(:class:`Uniform`, :class:`LogUniform`, :class:`IntRange`, :class:`Choice`) so
that definitions do not import Ray; ``aipaas.training.tune`` samples it.

A definition is checked when it is built (:class:`ConfigurationError` names the
problem): a definition that cannot be gated fails at import, not at its first
promotion. What only the data can tell (a slice's column missing from the
holdout) is checked when promotion slices the holdout.
"""

from __future__ import annotations

import importlib.util
import math
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


# On rows of one class only these are defined (accuracy there is that class's
# recall); AUCs, precision, recall and f1 need both classes.
ONE_CLASS_METRICS = frozenset({"accuracy", "log_loss"})
# Metrics where a smaller value is the better model.
LOWER_IS_BETTER = frozenset({"rmse", "mae", "log_loss"})


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is a better model."""
    return metric not in LOWER_IS_BETTER


@dataclass(frozen=True)
class Slice:
    """A named part of the holdout that promotion gates on its own.

    Rows whose ``column`` is one of ``values``, or lies in ``range`` =
    ``(low, high)``: ``low <= x < high``, so adjacent bands do not overlap; one
    end may be None (open). The column may be a feature, the target (a class
    slice: ``Slice("malignant", "diagnosis", values=("malignant",))``) or any
    other column of the holdout (an attribute the model does not read).
    ``metrics`` limits which slice-gated metrics apply to this slice (empty:
    all of them), so a class slice can be gated on accuracy while bands are
    gated on roc_auc.
    """

    name: str
    column: str
    values: tuple[Any, ...] | None = None
    range: tuple[float | None, float | None] | None = None
    metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"slice {self.name!r}"
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigurationError(f"a slice needs a name, not {self.name!r}")
        if not isinstance(self.column, str) or not self.column:
            raise ConfigurationError(f"{where}: column must be a column name, not {self.column!r}")
        if (self.values is None) == (self.range is None):
            raise ConfigurationError(f"{where}: give either values=(...) or range=(low, high)")
        if self.values is not None:
            if isinstance(self.values, str | bytes) or not hasattr(self.values, "__iter__"):
                raise ConfigurationError(
                    f"{where}: values must be a tuple of values, not {self.values!r}"
                )
            object.__setattr__(self, "values", tuple(self.values))
            if not self.values:
                raise ConfigurationError(f"{where}: values is empty")
        if self.range is not None:
            object.__setattr__(self, "range", _checked_range(where, self.range))
        if isinstance(self.metrics, str):
            raise ConfigurationError(f"{where}: metrics must be a tuple, e.g. ({self.metrics!r},)")
        object.__setattr__(self, "metrics", tuple(self.metrics))

    def applies_to(self, metric: str) -> bool:
        """Whether the slice gates on ``metric`` mean this slice."""
        return not self.metrics or metric in self.metrics

    def describe(self) -> str:
        """The rows it selects, as a person reads them: ``mean_radius in [12, 15)``."""
        if self.range is not None:
            low, high = self.range
            if low is None:
                return f"{self.column} < {high:g}"
            if high is None:
                return f"{self.column} >= {low:g}"
            return f"{self.column} in [{low:g}, {high:g})"
        values = self.values or ()
        if len(values) == 1:
            return f"{self.column} = {values[0]}"
        return f"{self.column} in {{{', '.join(str(v) for v in values)}}}"


def _checked_range(where: str, bounds: Any) -> tuple[float | None, float | None]:
    if isinstance(bounds, str) or not hasattr(bounds, "__len__") or len(bounds) != 2:
        raise ConfigurationError(f"{where}: range must be (low, high), not {bounds!r}")
    low, high = bounds
    for end in (low, high):
        ok = end is None or (
            isinstance(end, int | float) and not isinstance(end, bool) and math.isfinite(end)
        )
        if not ok:
            raise ConfigurationError(f"{where}: range ends must be numbers or None, not {end!r}")
    if low is None and high is None:
        raise ConfigurationError(f"{where}: range (None, None) selects every row; give an end")
    if low is not None and high is not None and not low < high:
        raise ConfigurationError(f"{where}: range low {low} must be below high {high}")
    return (None if low is None else float(low), None if high is None else float(high))


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
    # Slice gates, checked on the same holdout as the champion comparison.
    slices: tuple[Slice, ...] = ()
    # metric -> floor (or ceiling) on every slice the metric applies to.
    min_slice_metrics: Mapping[str, float] = field(default_factory=dict)
    max_slice_metrics: Mapping[str, float] = field(default_factory=dict)
    # metric -> the largest allowed difference between the best and worst slice.
    max_slice_gap: Mapping[str, float] = field(default_factory=dict)
    # metric -> how much worse than the champion the challenger may be on any slice.
    slice_champion_tolerance: Mapping[str, float] = field(default_factory=dict)
    # A slice with fewer holdout rows is not judged: its gates fail, saying
    # "not enough rows", rather than pass or fail on a handful of rows.
    slice_min_rows: int = 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "slices", tuple(self.slices))
        if any(not isinstance(s, Slice) for s in self.slices):
            raise ConfigurationError("gates: slices must be Slice(...) objects")
        names = [s.name for s in self.slices]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigurationError(f"gates: slice names must be unique; repeated: {twice}")
        kinds = self.slice_gates()
        for kind, bounds in kinds.items():
            for metric, bound in bounds.items():
                number = isinstance(bound, int | float) and not isinstance(bound, bool)
                if not number or not math.isfinite(bound):
                    raise ConfigurationError(
                        f"gates: {kind}[{metric!r}] must be a number, not {bound!r}"
                    )
                if kind in ("max_slice_gap", "slice_champion_tolerance") and bound < 0:
                    raise ConfigurationError(f"gates: {kind}[{metric!r}] must be >= 0, not {bound}")
        gated = any(kinds.values())
        if self.slices and not gated:
            raise ConfigurationError(
                "gates: slices are named but no slice gate checks them; set min_slice_metrics, "
                "max_slice_metrics, max_slice_gap or slice_champion_tolerance"
            )
        if gated and not self.slices:
            raise ConfigurationError("gates: slice gates are set but no slices are named")
        if isinstance(self.slice_min_rows, bool) or not (
            isinstance(self.slice_min_rows, int) and self.slice_min_rows >= 1
        ):
            raise ConfigurationError(
                f"gates: slice_min_rows must be a whole number >= 1, not {self.slice_min_rows!r}"
            )

    def slice_gates(self) -> dict[str, Mapping[str, float]]:
        """The slice gates by kind (field name), each metric -> bound."""
        return {
            "min_slice_metrics": self.min_slice_metrics,
            "max_slice_metrics": self.max_slice_metrics,
            "max_slice_gap": self.max_slice_gap,
            "slice_champion_tolerance": self.slice_champion_tolerance,
        }

    def slice_metrics(self) -> list[str]:
        """Every metric some slice gate reads, in the order the gates name them."""
        out: list[str] = []
        for bounds in self.slice_gates().values():
            out += [m for m in bounds if m not in out]
        return out


@dataclass(frozen=True)
class Canary:
    """Limits a challenger must hold while it takes live traffic (``aipaas promote --canary``).

    The canary flow compares the challenger's live evidence with the
    champion's over the same window; one limit broken sends all traffic back
    to the champion at once. Unset (None) limits are not judged.
    """

    # Share of traffic (percent of client keys, stable per key) and watch window.
    percent: float = 10.0
    watch_s: float = 900.0
    # Challenger requests that failed (answered by the champion instead), as a share.
    max_error_rate: float = 0.01
    # The challenger's p99 latency over the champion's, both measured on live traffic.
    max_p99_ratio: float | None = 1.5
    # ... and in absolute terms, milliseconds (None: only the ratio).
    max_p99_ms: float | None = None
    # Drift of the challenger's outputs against the champion's: the drift check's
    # sampling-corrected Hellinger distance, on class frequencies or on the
    # champion's output deciles; above it, rolled back.
    max_output_drift: float | None = 0.25
    # With labelled feedback: how much lower the challenger's accuracy may be.
    max_accuracy_drop: float | None = 0.05
    # Labelled challenger requests needed before accuracy is judged.
    min_labels: int = 20
    # Challenger requests needed to promote at the end; fewer: inconclusive, no promotion.
    min_requests: int = 50
    # How often the flow reads the evidence.
    check_every_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.percent <= 100:
            raise ConfigurationError(f"canary: percent must be in (0, 100], not {self.percent!r}")
        if self.watch_s <= 0 or self.check_every_s <= 0:
            raise ConfigurationError("canary: watch_s and check_every_s must be > 0")
        if not 0 <= self.max_error_rate <= 1:
            raise ConfigurationError(
                f"canary: max_error_rate must be in [0, 1], not {self.max_error_rate!r}"
            )
        for name in ("max_p99_ratio", "max_p99_ms", "max_output_drift", "max_accuracy_drop"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ConfigurationError(f"canary: {name} must be >= 0 or None, not {value!r}")
        if self.min_requests < 1 or self.min_labels < 1:
            raise ConfigurationError("canary: min_requests and min_labels must be >= 1")


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
    canary: Canary = Canary()
    # Store raw inputs in the audit trail (off: only their keyed hash).
    log_inputs: bool = False
    description: str = ""
    # For the model card: what the model is for (and not for), and what is
    # known to go wrong with it.
    intended_use: str = ""
    limits: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_slices(self)

    @property
    def is_text(self) -> bool:
        """A text model takes exactly one string column named ``text``."""
        return tuple(self.features) == ("text",)


def _check_slices(d: ModelDefinition) -> None:
    """Slice gates only on metrics the definition computes, and defined on each slice."""
    gated = d.gates.slice_metrics()
    where = f"model {d.name!r}"
    missing = [m for m in gated if m not in d.metrics]
    if missing:
        raise ConfigurationError(
            f"{where}: slice gates read {missing}, which are not among its metrics "
            f"{list(d.metrics)}; add them to metrics=(...)"
        )
    for s in d.gates.slices:
        stray = [m for m in s.metrics if m not in gated]
        if stray:
            raise ConfigurationError(
                f"{where}: slice {s.name!r} names metrics {stray} that no slice gate checks "
                f"(slice-gated metrics: {gated})"
            )
        if s.column != d.target or d.task != "classification":
            continue
        if s.range is not None:
            raise ConfigurationError(
                f"{where}: slice {s.name!r} takes a range of the class target {d.target!r}; "
                "name its classes with values=(...)"
            )
        undefined = [m for m in gated if s.applies_to(m) and m not in ONE_CLASS_METRICS]
        if s.values is not None and len(s.values) == 1 and undefined:
            raise ConfigurationError(
                f"{where}: slice {s.name!r} holds one class of {d.target!r}, on which "
                f"{undefined} are undefined; limit it with metrics=('accuracy',) and gate "
                "accuracy on slices (accuracy on one class is that class's recall)"
            )


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
    try:
        spec.loader.exec_module(module)
    except ConfigurationError as err:
        raise ConfigurationError(f"{path}: {err}") from err
    definition = getattr(module, "definition", None)
    if not isinstance(definition, ModelDefinition):
        raise ConfigurationError(f"{path} must define `definition = ModelDefinition(...)`")
    if definition.name != name:
        raise ConfigurationError(f"{path} defines model {definition.name!r}, expected {name!r}")
    return definition


def list_definitions(models_dir: Path) -> list[str]:
    return sorted(p.stem for p in models_dir.glob("*.py") if not p.stem.startswith("_"))
