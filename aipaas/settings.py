"""One typed settings object for the whole platform.

Sources, highest priority first: explicit arguments, ``AIPAAS_*`` environment
variables (nested with ``__``, e.g. ``AIPAAS_SERVING__PORT=8001``), a ``.env``
file, then ``params.yaml`` in the project root. Nothing is read at import
time: call :func:`get_settings` (cached) or build ``Settings(...)`` directly in
tests.

All state the platform writes lives under ``home`` (``AIPAAS_HOME``, default
``.aipaas/`` in the project), so a test or a second instance can point
elsewhere. Core functions receive only the section they need.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER_SECRET = "change-me"  # noqa: S105 - refused outside development


def _params_file() -> Path:
    return Path(os.environ.get("AIPAAS_PARAMS", PROJECT_ROOT / "params.yaml"))


class DataSettings(BaseModel):
    """Where datasets live and how they are split."""

    dir: Path = PROJECT_ROOT / "data"
    expectations_dir: Path = PROJECT_ROOT / "expectations"
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 42


class DatasetSpec(BaseModel):
    """One dataset: where its rows come from and which column is the label.

    ``source`` names a loader in :mod:`aipaas.datasets.ingest`: ``sklearn:<name>`` (a
    dataset scikit-learn ships offline, e.g. ``sklearn:breast_cancer``) or
    ``csv:<path>`` (a team's own file under ``data/sources/``, the path relative
    to the repository root, e.g. ``csv:data/sources/claims.csv``).
    """

    source: str
    target: str
    task: Literal["classification", "regression"] = "classification"


class VersioningSettings(BaseModel):
    """DVC: the repository that tracks ``data/`` and its default remote."""

    repo: Path = PROJECT_ROOT
    remote_name: str = "aipaas"
    # Any DVC remote URL (s3://, gs://, a path). Empty: ``<home>/dvc-remote``.
    remote_url: str = ""


class MlflowSettings(BaseModel):
    """The tracking server and registry."""

    host: str = "127.0.0.1"
    port: int = 5000
    # Empty: ``http://{host}:{port}``, the server ``aipaas mlflow`` starts.
    tracking_uri: str = ""
    # Empty: a SQLite file and an artifact directory under ``home``.
    backend_store_uri: str = ""
    artifacts_destination: str = ""
    experiment: str = "aipaas"
    # The team setup: the server runs MLflow's basic-auth app (users and
    # per-model permissions) and every component logs in as ``username``, the
    # platform's own account (the auth app's admin). Off on one laptop.
    auth_enabled: bool = False
    username: str = "aipaas"
    password: SecretStr = SecretStr(PLACEHOLDER_SECRET)
    # Bounded retries when the server is unreachable, then a clear error.
    http_max_retries: int = 2
    http_timeout_s: int = 10


class RaySettings(BaseModel):
    """Local Ray by default; ``RAY_ADDRESS`` (or ``address``) joins a cluster."""

    address: str = Field("", validation_alias=AliasChoices("address", "RAY_ADDRESS"))
    num_cpus: int | None = None
    # Where each search's trial table goes (<name>/trials.json), written by
    # the driver: a path or an object-store URI (s3://...). Empty:
    # ``<home>/ray-results``.
    storage_path: str = ""
    object_store_memory_mb: int = 200
    include_dashboard: bool = False
    # `aipaas up` keeps one head node running for its flow runs (unless
    # `address` names a cluster); 0 picks a free port on each start.
    head: bool = True
    head_port: int = Field(0, ge=0, le=65535)


class TuneSettings(BaseModel):
    """Hyperparameter search."""

    num_samples: int = 8
    max_concurrent: int = 2
    seed: int = 42
    cv_folds: int = 3
    eval_shards: int = 2


class PrefectSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 4200
    # Empty: ``http://{host}:{port}/api``.
    api_url: str = ""
    # Cron schedules of the deployments that ``aipaas up`` serves.
    lifecycle_cron: str = ""
    drift_cron: str = "*/15 * * * *"
    # Prefect's own database (``postgresql+asyncpg://...``). Empty: Prefect's
    # SQLite file under ``<home>/prefect``.
    database_url: SecretStr = SecretStr("")
    # The server's API auth string (``user:password``): the team setup sets it,
    # and every client (worker, CLI, serving's triggers) sends it. Empty: open.
    auth_string: SecretStr = SecretStr("")
    # The process work pool the deployments run on; ``aipaas worker`` joins it.
    work_pool: str = "aipaas"


class ServingSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    default_model: str = "diagnosis"
    # An allow-list of the models this server serves (besides default_model).
    # Empty: every registered model with a champion, discovered at start-up and
    # at each poll, with no setting to edit when a team adds a model.
    models: list[str] = Field(default_factory=list)
    auth_enabled: bool = True
    rate_limit_enabled: bool = True
    audit_enabled: bool = True
    profiling_enabled: bool = True
    # Prometheus counters per request (/metrics answers either way).
    metrics_enabled: bool = True
    # Browser apps: origins allowed to call the API cross-origin (exact
    # "https://shop.example" entries); publishable keys add their own.
    cors_origins: list[str] = Field(default_factory=list)
    # A folder of an app's static files, served at "/" (same origin as /predict).
    static_dir: Path | None = None
    # The web console at /console (admin login; see serving/console/).
    console_enabled: bool = True
    default_rate: str = "50/s"
    max_body_bytes: int = 1_000_000
    max_batch_rows: int = 1000
    reload_poll_s: float = 10.0
    # Price of one second of model compute, for usage and cost.
    cost_per_compute_second: float = 0.0005
    # Both set: serve HTTPS with this certificate chain and private key (PEM files).
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    # Serving processes on this host behind one port (uvicorn workers), each
    # with its own model copy, spool segment and audit writer. A key gets its
    # rate in total across them (and across hosts): see rate_limit_store.
    replicas: int = Field(1, ge=1, le=64)
    # "uvicorn": `replicas` processes on this host behind one port; "ray": a Ray Serve
    # deployment of `replicas` replicas (one CPU each) on the Ray cluster at ray.address
    # (`aipaas serve --ray`; serving/rayserve.py).
    backend: Literal["uvicorn", "ray"] = "uvicorn"
    # Where per-key token buckets live (aipaas/inference/ratelimit.py): "host", a file
    # under home shared by this host's replicas; "database", the platform database's
    # rate_buckets (PostgreSQL only), shared by every host; "auto": "database" when the
    # platform database is PostgreSQL, else "host" (process memory with one replica).
    rate_limit_store: Literal["auto", "host", "database"] = "auto"


class AuditSettings(BaseModel):
    # Empty: ``sqlite:///<home>/platform.db`` (keys, audit, usage).
    # Empty: sqlite:///<home>/platform.db; postgresql+psycopg://user@host/db to share it.
    db_url: str = ""
    hmac_key: SecretStr = SecretStr(PLACEHOLDER_SECRET)
    commit_window_ms: float = 2.0
    # SQLite: false commits to the WAL without fsync (a record survives the
    # server crashing, not the machine losing power); true fsyncs every group
    # commit (about 4 ms each on a plain disk).
    fsync: bool = False


class MonitoringSettings(BaseModel):
    # A model version's profile window closes once it holds window_rows rows,
    # or window_minutes after its first row with whatever it holds.
    window_rows: int = 500
    window_minutes: float = 10.0
    # Under sustained traffic at most one window closes per window_min_seconds
    # per model version (after window_burst back to back): heavy traffic makes
    # bigger windows, not more of them. 0: every window_rows rows, however fast.
    window_min_seconds: float = Field(60.0, ge=0.0)
    window_burst: int = Field(10, ge=1)


class RetrainSettings(BaseModel):
    cooldown_minutes: float = 30.0
    max_per_day: int = 4
    suggest_only: bool = False


class WebhookSettings(BaseModel):
    """One receiver of the platform's notifications."""

    url: str
    # "json": the event as JSON; "slack": a Slack-compatible {"text": ...} body.
    format: Literal["json", "slack"] = "json"
    # Event kinds sent to it (see aipaas/notify.py); empty: every kind.
    events: list[str] = Field(default_factory=list)


class NotifySettings(BaseModel):
    """Webhooks on what operators must hear about (sent off the request path)."""

    webhooks: list[WebhookSettings] = Field(default_factory=list)
    # Signs every body: header X-Aipaas-Signature: sha256=<hex HMAC of the body>.
    signing_key: SecretStr = SecretStr("")
    max_attempts: int = Field(5, ge=1)
    timeout_s: float = 5.0
    # A key's quota used past this fraction is announced (once per period).
    quota_warn_fraction: float = Field(0.8, gt=0.0, le=1.0)


class Settings(BaseSettings):
    """Everything configurable, one object."""

    model_config = SettingsConfigDict(
        env_prefix="AIPAAS_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    environment: Literal["development", "production"] = "development"
    home: Path = PROJECT_ROOT / ".aipaas"
    models_dir: Path = PROJECT_ROOT / "models"

    data: DataSettings = DataSettings()
    # Declared in params.yaml under ``datasets:``; dvc.yaml runs its stages for each.
    datasets: dict[str, DatasetSpec] = Field(
        default_factory=lambda: {
            "breast_cancer": DatasetSpec(source="sklearn:breast_cancer", target="diagnosis")
        }
    )
    versioning: VersioningSettings = VersioningSettings()
    mlflow: MlflowSettings = MlflowSettings()
    ray: RaySettings = RaySettings()
    tune: TuneSettings = TuneSettings()
    prefect: PrefectSettings = PrefectSettings()
    serving: ServingSettings = ServingSettings()
    audit: AuditSettings = AuditSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    retrain: RetrainSettings = RetrainSettings()
    notify: NotifySettings = NotifySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_source = YamlConfigSettingsSource(settings_cls, yaml_file=_params_file())
        return (init_settings, env_settings, dotenv_settings, yaml_source, file_secret_settings)

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        if not self.ray.address and os.environ.get("RAY_ADDRESS"):
            self.ray.address = os.environ["RAY_ADDRESS"]
        if self.environment != "development":
            if self.audit.hmac_key.get_secret_value() == PLACEHOLDER_SECRET:
                raise ValueError(
                    "AIPAAS_AUDIT__HMAC_KEY is the placeholder; set a real secret "
                    "outside development"
                )
            if self.mlflow.auth_enabled and (
                self.mlflow.password.get_secret_value() == PLACEHOLDER_SECRET
            ):
                raise ValueError(
                    "AIPAAS_MLFLOW__PASSWORD is the placeholder; set a real password "
                    "outside development"
                )
        return self

    # Derived locations: one place computes every path under home.
    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"http://{self.mlflow.host}:{self.mlflow.port}"

    @property
    def mlflow_backend_store_uri(self) -> str:
        return self.mlflow.backend_store_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlflow_artifacts_destination(self) -> str:
        return self.mlflow.artifacts_destination or str(self.home / "mlartifacts")

    @property
    def prefect_api_url(self) -> str:
        return self.prefect.api_url or f"http://{self.prefect.host}:{self.prefect.port}/api"

    @property
    def dvc_remote_url(self) -> str:
        return self.versioning.remote_url or str(self.home / "dvc-remote")

    @property
    def db_url(self) -> str:
        return self.audit.db_url or f"sqlite:///{self.home / 'platform.db'}"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def profiles_dir(self) -> Path:
        return self.home / "profiles"

    @property
    def run_dir(self) -> Path:
        """Pid files and logs of the servers ``aipaas up`` starts."""
        return self.home / "run"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests build ``Settings(...)`` instead."""
    return Settings()
