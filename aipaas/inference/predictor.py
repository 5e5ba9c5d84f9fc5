"""A registered version -> a fast predictor, for serving.

``mlflow models serve`` goes through pyfunc and a pandas DataFrame for every
request, which costs milliseconds for one row. Here a version is loaded
through its native flavour where possible (:func:`aipaas.training.registry.load_native`
chooses it) and called with a plain list of rows: a LightGBM model goes
straight to its booster with one thread, a scikit-learn model to
``predict_proba`` on a NumPy array (or a list of strings for a text model).
Any other flavour goes through pyfunc. Its MLflow signature becomes
:class:`FieldSpec` s, from which serving generates its request schema.

Serving asks :func:`load_model` to check a version's signed promotion record
before it loads anything (``require``): the champion must be the one the
audit chain recorded last, a pinned version must have been promoted once,
and a canary's challenger (never promoted yet) must be the version the
model's signed canary start on the audit chain names.

What serving needs of the model definition comes from the version's tags,
written at training time (:class:`VersionMeta`), so a serving host needs the
registry, not the ``models/`` folder. No MLflow type leaves this module.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from aipaas import db
from aipaas.exceptions import (
    AipaasError,
    AuditIntegrityError,
    ConfigurationError,
    RegistryUnavailableError,
    UnsignedVersionError,
)
from aipaas.settings import Settings
from aipaas.training import attestation, registry, tags

if TYPE_CHECKING:  # the canary module pulls in promotion (pandas): imported when used
    from aipaas.training.canary import CanaryState

log = logging.getLogger(__name__)

FieldType = Literal["float", "int", "str", "bool"]
_TYPES: dict[str, FieldType] = {
    "double": "float",
    "float": "float",
    "long": "int",
    "integer": "int",
    "string": "str",
    "boolean": "bool",
}


@dataclass(frozen=True)
class FieldSpec:
    """One input column from the model's signature."""

    name: str
    type: FieldType
    required: bool = True


@dataclass(frozen=True)
class Prediction:
    outputs: list[Any]
    probabilities: list[dict[str, float]] | None


@dataclass(frozen=True)
class VersionMeta:
    """What serving shows and obeys of a registered version: its run, data and tags.

    ``log_inputs`` is the version's ``aipaas.log_inputs`` tag (the model
    definition's choice, written at training time); a version without it
    never has its raw inputs stored.
    """

    run_id: str | None = None
    source: str | None = None
    dataset: str | None = None
    data_version: str | None = None
    promoted_at: str | None = None
    aliases: tuple[str, ...] = ()
    log_inputs: bool = False

    @classmethod
    def from_version(cls, info: registry.ModelVersionInfo) -> VersionMeta:
        return cls(
            run_id=info.run_id,
            source=info.source,
            dataset=info.tags.get(tags.DATASET),
            data_version=info.tags.get(tags.DATA_HASH),
            promoted_at=info.tags.get(tags.PROMOTED_AT),
            aliases=tuple(info.aliases),
            log_inputs=info.tags.get(tags.LOG_INPUTS, "").strip().lower() == "true",
        )


PredictFn = Callable[[list[list[Any]]], Prediction]


@dataclass
class LoadedModel:
    """A version ready to answer: call :meth:`predict` with rows in ``fields`` order."""

    name: str
    version: str
    fields: tuple[FieldSpec, ...]
    flavor: str
    classes: tuple[Any, ...] | None
    meta: VersionMeta
    predict_fn: PredictFn = field(repr=False)
    loaded_at: float = field(default_factory=time.time)

    @property
    def is_text(self) -> bool:
        return tuple(f.name for f in self.fields) == ("text",)

    def predict(self, rows: list[list[Any]]) -> Prediction:
        return self.predict_fn(rows)

    def warm(self, times: int = 20) -> None:
        """Run a few predictions so first requests do not pay lazy initialisation."""
        row = [_placeholder(f) for f in self.fields]
        for _ in range(times):
            self.predict_fn([row])


def _placeholder(spec: FieldSpec) -> Any:
    return {"float": 0.0, "int": 0, "str": "warm up", "bool": False}[spec.type]


def fields_from_signature(signature: Any) -> tuple[FieldSpec, ...]:
    """MLflow ``ModelSignature`` inputs (named columns) -> field specs."""
    if signature is None or signature.inputs is None:
        raise ConfigurationError(
            "the model has no MLflow signature: log it with `signature=infer_signature(X, y)` "
            "so serving can validate requests"
        )
    out = []
    for spec in signature.inputs.inputs:
        name = getattr(spec, "name", None)
        if not name:
            raise ConfigurationError("the model signature has unnamed columns; name every input")
        dtype = getattr(getattr(spec, "type", None), "name", str(getattr(spec, "type", "")))
        if dtype not in _TYPES:
            raise ConfigurationError(f"signature column {name!r} has unsupported type {dtype!r}")
        out.append(FieldSpec(name=name, type=_TYPES[dtype], required=bool(spec.required)))
    return tuple(out)


def _to_py(values: Any) -> list[Any]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _classifier_predict(
    proba_fn: Callable[[Any], Any], classes: Sequence[Any], make_x: Callable[[list[list[Any]]], Any]
) -> Callable[[list[list[Any]]], Prediction]:
    labels = [str(c) for c in classes]
    py_classes = _to_py(np.asarray(classes))

    def predict(rows: list[list[Any]]) -> Prediction:
        proba = np.asarray(proba_fn(make_x(rows)), dtype=np.float64)
        if proba.ndim == 1:  # a binary booster returns p(class 1)
            proba = np.column_stack([1.0 - proba, proba])
        best = proba.argmax(axis=1).tolist()
        outputs = [py_classes[i] for i in best]
        probs = [dict(zip(labels, p, strict=True)) for p in proba.tolist()]
        return Prediction(outputs, probs)

    return predict


def _plain_predict(
    fn: Callable[[Any], Any], make_x: Callable[[list[list[Any]]], Any]
) -> Callable[[list[list[Any]]], Prediction]:
    def predict(rows: list[list[Any]]) -> Prediction:
        return Prediction(_to_py(np.asarray(fn(make_x(rows)))), None)

    return predict


def _numeric_x(rows: list[list[Any]]) -> Any:
    return np.asarray(rows, dtype=np.float64)


def _text_x(rows: list[list[Any]]) -> Any:
    return [r[0] for r in rows]


def _text_frame(rows: list[list[Any]]) -> Any:
    """A one-column ``text`` DataFrame: what a pipeline fitted on a DataFrame takes."""
    import pandas as pd

    return pd.DataFrame({"text": [r[0] for r in rows]})


def _build(model: Any, flavor: str, fields: tuple[FieldSpec, ...]) -> tuple[Callable, Any]:
    """The fastest call path the loaded object supports, and its classes."""
    text = tuple(f.name for f in fields) == ("text",)
    make_x = _text_x if text else _numeric_x
    if flavor == "lightgbm":
        import lightgbm as lgb

        booster = model if isinstance(model, lgb.Booster) else model.booster_
        classes = getattr(model, "classes_", None)

        def raw(x: Any) -> Any:
            return booster.predict(x, num_threads=1)

        if classes is not None:
            return _classifier_predict(raw, classes, make_x), classes
        return _plain_predict(raw, make_x), None
    if flavor == "sklearn":
        if hasattr(model, "n_jobs"):
            try:
                model.set_params(n_jobs=1)
            except ValueError:
                pass
        # Fitted on a DataFrame, called with an array: same columns, same order.
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        if text and hasattr(model, "feature_names_in_"):
            # A text pipeline fitted on a DataFrame (a ColumnTransformer over
            # ``text``) selects its column by name: it needs the frame.
            make_x = _text_frame
        classes = getattr(model, "classes_", None)
        if classes is not None and hasattr(model, "predict_proba"):
            return _classifier_predict(model.predict_proba, classes, make_x), classes
        return _plain_predict(model.predict, make_x), None
    # pyfunc: the slow, general path.
    import pandas as pd

    names = [f.name for f in fields]

    def frame(rows: list[list[Any]]) -> Any:
        return pd.DataFrame(rows, columns=names)

    return _plain_predict(model.predict, frame), None


# What a version must prove before it is loaded: that it is the champion on
# record (the alias's version), that it was promoted at some time (a pin), or
# that a signed canary or shadow release of it runs now (a challenger).
Require = Literal["champion", "promoted", "canary"]


def load_model(
    settings: Settings, name: str, version: str, *, require: Require | None = None
) -> LoadedModel:
    """Load ``models:/<name>/<version>`` through its native flavour, warmed.

    ``require`` checks the version's signed promotion record *before*
    anything is loaded: ``"champion"`` as serving's champion
    (:func:`aipaas.training.attestation.verify_current`), ``"promoted"`` for
    a version addressed explicitly (:func:`aipaas.training.attestation.verify`),
    ``"canary"`` for a challenger taking a canary's or shadow's share
    (:func:`verify_canary`).

    Raises:
        UnsignedVersionError: ``require`` was given and the version may not serve.
        ModelNotFoundError: the version does not exist or cannot be loaded.
        RegistryUnavailableError: the tracking server did not answer.
        DatabaseUnavailableError: ``"canary"``, and the platform database did not answer.
        ConfigurationError: the model has no usable signature.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    registry.connect(settings, check=False)
    info = _call(lambda: registry.get_version(name, version))
    if require == "champion":
        attestation.verify_current(settings, name, info.version, info.tags)
    elif require == "promoted":
        try:
            attestation.verify(settings, name, info.version, info.tags)
        except UnsignedVersionError as err:
            raise UnsignedVersionError(
                f"only a version that was promoted at some time can be asked for; {err}"
            ) from err
    elif require == "canary":
        verify_canary(settings, name, info.version)
    flavor, model = registry.load_native(info.uri)
    fields = fields_from_signature(_call(lambda: _signature(info.uri)))
    predict, classes = _build(model, flavor, fields)
    loaded = LoadedModel(
        name=name,
        version=str(version),
        fields=fields,
        flavor=flavor,
        classes=tuple(_to_py(np.asarray(classes))) if classes is not None else None,
        meta=VersionMeta.from_version(info),
        predict_fn=predict,
    )
    loaded.warm()
    return loaded


def active_canary(settings: Settings, name: str) -> CanaryState | None:
    """The canary or shadow release of ``name`` running now (its signed start), None if none.

    Raises:
        AuditIntegrityError: the latest canary event was edited, never signed, or
            does not parse (a row written by hand): no challenger may serve.
        DatabaseUnavailableError: the platform database did not answer.
    """
    from aipaas.training import canary

    try:
        with db.reachable():
            return canary.active(settings, name)
    except (KeyError, TypeError, ValueError) as err:  # a detail no `promote --canary` wrote
        raise AuditIntegrityError(
            f"the latest canary event of {name} is malformed ({type(err).__name__}: {err}): "
            "it was not written by `aipaas promote --canary`"
        ) from err


def verify_canary(settings: Settings, name: str, version: str) -> CanaryState:
    """The signed canary (or shadow) release of ``version`` running now, or why there is none.

    Raises:
        UnsignedVersionError: no release runs, it names another version, or its
            start event was edited or never signed.
        DatabaseUnavailableError: the platform database did not answer.
    """
    try:
        state = active_canary(settings, name)
    except AuditIntegrityError as err:
        raise UnsignedVersionError(f"{name} v{version} may not take live traffic: {err}") from err
    if state is None or state.version != str(version):
        running = f"v{state.version} is" if state is not None else "no version is"
        raise UnsignedVersionError(
            f"{name} v{version} is not the challenger of a canary or shadow on record "
            f"({running} taking one): start one with `aipaas promote {name} --canary`"
        )
    return state


def _signature(uri: str) -> Any:
    from mlflow.models import get_model_info

    return get_model_info(uri).signature


def champion_version(settings: Settings, name: str, alias: str = tags.CHAMPION) -> str | None:
    """The version ``alias`` points at, None if unset; registry errors become ours."""
    registry.connect(settings, check=False)
    info = _call(lambda: registry.get_alias(name, alias))
    return None if info is None else info.version


def models_with_champion(settings: Settings, alias: str = tags.CHAMPION) -> list[str]:
    """Every registered model that has ``alias`` set, by name."""
    registry.connect(settings, check=False)
    names: list[str] = _call(registry.list_models)

    def has(name: str) -> bool:
        return _call(lambda: registry.get_alias(name, alias)) is not None

    return [n for n in names if has(n)]


def _call(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except AipaasError:
        raise
    except Exception as err:  # noqa: BLE001 - MLflow/requests errors, translated
        raise RegistryUnavailableError(
            f"MLflow registry error: {type(err).__name__}: {err}"
        ) from err
