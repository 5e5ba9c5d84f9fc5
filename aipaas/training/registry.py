"""The MLflow adapter: tracking connection, registry versions, aliases, tags.

Everything else in the platform talks to MLflow's registry through this
module and gets back :class:`ModelVersionInfo`, never an MLflow entity, so the
registry could be swapped by changing one file. Training's logging calls
(``mlflow.log_*``) live in ``aipaas.training.train`` beside the run they describe.

Registry stages are deprecated in MLflow 3: the platform uses aliases
(``champion``, ``challenger``, ``previous-champion``).
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aipaas.exceptions import ModelNotFoundError, RegistryUnavailableError
from aipaas.settings import Settings


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: str
    run_id: str | None
    source: str
    created_ms: int
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def _info(mv: Any) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id,
        source=mv.source,
        created_ms=int(mv.creation_timestamp or 0),
        tags=dict(mv.tags or {}),
        aliases=tuple(getattr(mv, "aliases", ()) or ()),
    )


def connect(settings: Settings, *, check: bool = True) -> str:
    """Point MLflow at the configured tracking server and registry.

    For an HTTP tracking URI the server is probed with bounded retries, so an
    unreachable server fails fast with a message instead of MLflow's own long
    back-off. In the team setup (``mlflow.auth_enabled``) every client in this
    process logs in as the platform's account: MLflow reads the credentials
    from ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` on each
    request, so they are set here, from settings, once.
    """
    import mlflow

    uri = settings.mlflow_tracking_uri
    os.environ.update(credentials_env(settings))
    # MLflow's own HTTP retries, bounded: its default retries for minutes.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(settings.mlflow.http_max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(settings.mlflow.http_timeout_s)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if check and uri.startswith(("http://", "https://")):
        wait_for_server(uri, attempts=settings.mlflow.http_max_retries + 1)
    return uri


def credentials_env(settings: Settings) -> dict[str, str]:
    """The MLflow client's login as the platform's account; empty when auth is off."""
    if not settings.mlflow.auth_enabled:
        return {}
    return {
        "MLFLOW_TRACKING_USERNAME": settings.mlflow.username,
        "MLFLOW_TRACKING_PASSWORD": settings.mlflow.password.get_secret_value(),
    }


def wait_for_server(uri: str, *, attempts: int = 3, delay_s: float = 1.0) -> None:
    """Probe ``<uri>/health``; raise :class:`RegistryUnavailableError` if it never answers."""
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as err:
            last = err
        if attempt < attempts - 1:
            time.sleep(delay_s * (attempt + 1))
    raise RegistryUnavailableError(
        f"MLflow server at {uri} did not answer after {attempts} attempts ({last}); "
        "start it with `aipaas mlflow` (or `make up`), or set AIPAAS_MLFLOW__TRACKING_URI"
    )


def ensure_experiment(settings: Settings) -> str:
    """The experiment id, created with artifacts under ``home`` when it is new.

    For a file or SQLite tracking URI MLflow would otherwise write artifacts
    to ``./mlruns`` in the working directory.
    """
    import mlflow

    name = settings.mlflow.experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        mlflow.set_experiment(experiment_id=exp.experiment_id)
        return str(exp.experiment_id)
    uri = settings.mlflow_tracking_uri
    location = None
    if not uri.startswith(("http://", "https://")):
        artifacts = settings.home / "mlartifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        location = artifacts.as_uri()
    exp_id = mlflow.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(experiment_id=exp_id)
    return str(exp_id)


def get_version(name: str, version: str | int) -> ModelVersionInfo:
    from mlflow.exceptions import MlflowException

    try:
        return _info(_client().get_model_version(name, str(version)))
    except MlflowException as err:
        raise ModelNotFoundError(f"model {name!r} has no registered version {version}") from err


def get_alias(name: str, alias: str) -> ModelVersionInfo | None:
    """The version an alias points at, or None if the alias (or model) is unset."""
    from mlflow.exceptions import MlflowException

    try:
        return _info(_client().get_model_version_by_alias(name, alias))
    except MlflowException as err:
        if _is_missing(err):
            return None
        raise


def set_alias(name: str, alias: str, version: str | int) -> None:
    _client().set_registered_model_alias(name, alias, str(version))


def delete_alias(name: str, alias: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        _client().delete_registered_model_alias(name, alias)
    except MlflowException as err:
        if not _is_missing(err):
            raise


def set_tags(name: str, version: str | int, tags: dict[str, Any]) -> None:
    client = _client()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def list_versions(name: str) -> list[ModelVersionInfo]:
    """All versions of a model, newest first; empty if the model is unknown."""
    versions = _client().search_model_versions(f"name='{name}'")
    return sorted((_info(v) for v in versions), key=lambda v: int(v.version), reverse=True)


def run_metrics(run_id: str) -> dict[str, float]:
    """The latest value of every metric a run logged (empty for an unknown run)."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(_client().get_run(run_id).data.metrics)
    except MlflowException as err:
        if _is_missing(err):
            return {}
        raise


def input_schema(model_uri: str) -> dict[str, str] | None:
    """The model's signature inputs as ``{column: type}``; None without a signature.

    Promotion compares these between champion and challenger: a removed or
    retyped input would break every client of the serving API.
    """
    import mlflow.models
    from mlflow.exceptions import MlflowException

    try:
        signature = mlflow.models.get_model_info(model_uri).signature
    except (MlflowException, OSError) as err:
        raise ModelNotFoundError(f"cannot read the model at {model_uri}: {err}") from err
    if signature is None or signature.inputs is None:
        return None
    schema: dict[str, str] = {}
    for i, spec in enumerate(signature.inputs.inputs):
        name = getattr(spec, "name", None) or f"#{i}"
        kind = getattr(spec, "type", None)
        schema[str(name)] = str(getattr(kind, "name", kind))
    return schema


def list_models() -> list[str]:
    return sorted(m.name for m in _client().search_registered_models())


def _is_missing(err: Exception) -> bool:
    code = getattr(err, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND") or (
        "not found" in str(err).lower() or "does not exist" in str(err).lower()
    )


def load_native(model_uri: str) -> tuple[str, Any]:
    """The model at ``model_uri`` in its own library's type, and that flavour's name.

    Native types expose ``predict_proba`` (MLflow's pyfunc wrapper only
    ``predict``): evaluation needs it for ranking metrics, serving for
    probabilities. LightGBM, then scikit-learn, else pyfunc. The one place that
    chooses a flavour to load.

    Raises:
        ModelNotFoundError: the URI names no model, or it cannot be loaded.
        RegistryUnavailableError: MLflow did not answer.
    """
    import mlflow
    from mlflow.models import get_model_info

    try:
        flavors = get_model_info(model_uri).flavors or {}
        if "lightgbm" in flavors:
            import mlflow.lightgbm

            return "lightgbm", mlflow.lightgbm.load_model(model_uri)
        if "sklearn" in flavors:
            import mlflow.sklearn

            return "sklearn", mlflow.sklearn.load_model(model_uri)
        return "pyfunc", mlflow.pyfunc.load_model(model_uri)
    except Exception as err:  # noqa: BLE001 - any load failure becomes one actionable error
        if _is_unreachable(err):
            raise RegistryUnavailableError(
                f"cannot reach MLflow to load {model_uri}: {err}"
            ) from err
        raise ModelNotFoundError(f"cannot load {model_uri}: {type(err).__name__}: {err}") from err


def _is_unreachable(err: Exception) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return any(s in text for s in ("connection", "timed out", "timeout", "max retries"))


def own_client(settings: Settings) -> Any:
    """An MLflow client on the platform's tracking server, not MLflow's global active run.

    For records kept beside training (drift checks, batch jobs): they may run
    in a console thread or beside a flow's own run.
    """
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=connect(settings))


def side_experiment(settings: Settings, client: Any, name: str) -> str:
    """The id of experiment ``name``, created if new (artifacts under ``home`` when local)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if not settings.mlflow_tracking_uri.startswith(("http://", "https://")):
        artifacts = Path(settings.home) / "mlartifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        location = artifacts.as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException:
        found = client.get_experiment_by_name(name)  # another host created it first
        if found is None:
            raise
        return str(found.experiment_id)
