"""Batch inference: a registered version scores a whole dataset version or file on Ray.

The steps, each a function a flow task or the CLI calls in turn:

    load_scorer    the champion (or a pinned version), checked as serving checks it
    read_input     a dataset version (DVC) or a CSV/Parquet file, with its hashes
    prepare        the rows in the signature's order, and a key per row
    score          Ray tasks over shards; each worker process deserialises the
                   model once per job, shards travel through the object store
    publish        the output file, one MLflow run (lineage) and one audit record

Nothing is written until every input is known good: an unknown model, a
model without champion, an unknown dataset or version, a file that cannot be
read or that lacks a column of the signature, an output that cannot be
written, all fail before any row is scored. ``publish`` writes the output
beside its destination, logs the MLflow run, appends the audit record and
only then moves the file into place, so a job that fails there leaves no
output and a run marked failed.

A row's key is its id column when the input has one (``id`` or ``row_id``,
unique and never empty), else the hash of the row's content as
``pandas.util.hash_pandas_object(frame, index=False)`` computes it (the
default key), written as 16 hexadecimal digits: the same rows always get the
same keys, so predictions join back to the input without positions.

A dataset version is what training records (:func:`aipaas.datasets.ingest.recorded_version`):
its prepared rows, ``train.csv`` then ``holdout.csv``. ``name@version``
names another version by its hash; its files come from the DVC cache or
remote by the md5s a registered model recorded for it, into a temporary
directory (the checkout is left as it is).

The audit record carries the keyed HMAC of the input's bytes, as serving's
records do of a request body; the plain hashes (file SHA-256 or dataset
version, output SHA-256) are in its detail and in the MLflow run.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import math
import os
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from aipaas import audit
from aipaas.datasets import ingest, validation, versioning
from aipaas.exceptions import (
    AipaasError,
    ConfigurationError,
    DatasetNotFoundError,
    DataValidationError,
    ModelNotFoundError,
    RegistryUnavailableError,
    VersioningError,
)
from aipaas.inference import predictor
from aipaas.inference.predictor import FieldSpec, LoadedModel
from aipaas.schemas import DatasetVersion
from aipaas.settings import Settings
from aipaas.training import registry, tags

log = logging.getLogger(__name__)

AUDIT_EVENT = "batch.predicted"
KIND_BATCH = "batch-prediction"  # the runs' tags.KIND
LINEAGE_ARTIFACT = "batch/lineage.json"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
ID_COLUMNS = ("id", "row_id")  # an input column taken as the row key, case-insensitive
HASH_KEY = "row_hash"  # the key column's name when rows are keyed by content
PREDICTION = "prediction"
PROBA_PREFIX = "proba_"  # proba_<class>: a classifier's probability of each class
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
MIN_SHARD_ROWS = 1_000
MAX_SHARD_ROWS = 50_000
SHARDS_PER_WORKER = 4  # small enough to balance, large enough that a task's overhead is noise

Format = Literal["csv", "parquet"]


# ---------------------------------------------------------------- values between the steps


@dataclass(frozen=True)
class BatchInput:
    """The rows to score and where they came from."""

    kind: Literal["dataset", "file"]
    name: str  # the dataset's name, or the file's path
    version: str  # the dataset version (DVC hash), or the file's SHA-256
    input_hmac: str  # keyed hash of the input's bytes, for the audit record
    frame: pd.DataFrame = field(repr=False)

    @property
    def label(self) -> str:
        """``breast_cancer@<hash>`` or the file's path."""
        return f"{self.name}@{self.version}" if self.kind == "dataset" else self.name

    @property
    def rows(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class Prepared:
    """The rows in the signature's column order, each with its key."""

    x: np.ndarray = field(repr=False)
    keys: np.ndarray = field(repr=False)
    key_column: str
    rows: int


@dataclass(frozen=True)
class Scored:
    """Predictions with their keys, and how the scoring went."""

    frame: pd.DataFrame = field(repr=False)  # key, prediction, proba_<class>...
    key_column: str
    rows: int
    shards: int
    workers: int  # distinct processes that scored a shard
    loads: int  # times a worker deserialised the model: once per worker
    seconds: float  # wall time of the scoring
    compute_s: float  # the shards' predict time, summed
    on_ray: bool

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class BatchResult:
    """One finished batch job: its lineage as recorded in MLflow and the audit trail."""

    model: str
    model_version: str
    input: str  # ``dataset@version`` or the file's path
    input_kind: str
    input_hash: str  # dataset version, or the file's SHA-256
    output: str
    output_sha256: str
    output_format: str
    rows: int
    seconds: float  # scoring wall time
    rows_per_s: float
    key_column: str
    shards: int
    workers: int
    who: str
    experiment: str
    mlflow_run_id: str
    audit_seq: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- the whole job


def predict_batch(
    settings: Settings,
    model: str,
    *,
    who: str,
    dataset: str | None = None,
    input_file: Path | None = None,
    output: Path | None = None,
    version: str | None = None,
    workers: int | None = None,
) -> BatchResult:
    """Score a dataset version (``name`` or ``name@version``) or a file; record it.

    What ``aipaas predict-batch`` runs; the ``batch`` flow runs the same
    steps as tasks.

    Raises:
        ConfigurationError: neither or both of ``dataset`` and ``input_file``,
            or an output that cannot be written.
        ModelNotFoundError: unknown model or version, or no champion.
        UnsignedVersionError: the version has no valid promotion record.
        DatasetNotFoundError: unknown dataset or version.
        DataValidationError: the input cannot be read or does not fit the signature.
        RegistryUnavailableError: MLflow did not answer.
    """
    _one_source(dataset, input_file)
    scorer = load_scorer(settings, model, version)
    batch_input = read_input(settings, dataset=dataset, input_file=input_file)
    destination = output_path(settings, output, scorer, batch_input)
    prepared = prepare(scorer, batch_input)
    scored = score(settings, scorer, prepared, workers=workers)
    return publish(settings, scorer, batch_input, scored, destination, who=who)


# ---------------------------------------------------------------- load_scorer


def load_scorer(settings: Settings, model: str, version: str | None = None) -> LoadedModel:
    """The champion of ``model``, or ``version`` of it, loaded as serving loads it.

    The champion must be the one the audit trail recorded last, a pinned
    version one that was promoted at some time: batch predictions are
    served predictions, and the platform serves no unsigned version.

    Raises:
        ModelNotFoundError: no such model, no such version, or no champion.
        UnsignedVersionError: the version may not serve.
        RegistryUnavailableError: MLflow did not answer.
    """
    registry.connect(settings)
    if version is None:
        version = predictor.champion_version(settings, model)
        if version is None:
            _known_model(model)
            raise ModelNotFoundError(
                f"{model!r} has no champion: promote a version (`aipaas promote {model}`) "
                "or name one with --version N"
            )
        return predictor.load_model(settings, model, version, require="champion")
    _known_model(model)
    return predictor.load_model(settings, model, str(version), require="promoted")


def _known_model(model: str) -> None:
    """Raise :class:`ModelNotFoundError` naming the registered models if ``model`` is not one."""
    from mlflow.exceptions import MlflowException

    try:
        if registry.list_versions(model):
            return
        known = ", ".join(registry.list_models()) or "none"
    except (MlflowException, OSError) as err:
        raise RegistryUnavailableError(
            f"MLflow registry error: {type(err).__name__}: {err}"
        ) from err
    raise ModelNotFoundError(
        f"no registered model {model!r} (registered: {known}); train it with `aipaas train {model}`"
    )


# ---------------------------------------------------------------- read_input


def read_input(
    settings: Settings, *, dataset: str | None = None, input_file: Path | None = None
) -> BatchInput:
    """The rows to score: a dataset version (``name`` or ``name@version``) or a file.

    Raises:
        ConfigurationError: neither or both were given.
        DatasetNotFoundError: unknown dataset, or no such version.
        DataValidationError: a file cannot be read, or has no rows.
    """
    _one_source(dataset, input_file)
    key = settings.audit.hmac_key.get_secret_value().encode()
    if dataset is not None:
        found = _read_dataset(settings, dataset, key)
    else:
        found = _read_file(Path(str(input_file)), key)
    if found.rows == 0:
        raise DataValidationError(f"{found.label} has no rows to score")
    return found


def _one_source(dataset: str | None, input_file: Path | None) -> None:
    if (dataset is None) == (input_file is None):
        raise ConfigurationError(
            "name what to score: --dataset NAME[@VERSION] or --input FILE (one of them)"
        )


def parse_dataset(ref: str) -> tuple[str, str | None]:
    """``"name@version"`` -> ``("name", "version")``; ``"name"`` -> ``("name", None)``."""
    name, sep, version = ref.strip().partition("@")
    if not name or (sep and not version.strip()):
        raise ConfigurationError(
            f"--dataset {ref!r}: write NAME or NAME@VERSION (a hash from `aipaas data version`)"
        )
    return name, version.strip() or None


def _read_dataset(settings: Settings, ref: str, key: bytes) -> BatchInput:
    name, wanted = parse_dataset(ref)
    ingest.spec(name, settings)  # DatasetNotFoundError: not declared
    try:
        current: DatasetVersion | None = ingest.recorded_version(name, settings)
    except (DatasetNotFoundError, DataValidationError):
        if wanted is None:
            raise
        current = None
    if current is not None and (wanted is None or _same_version(current.hash, wanted)):
        files = [current.train_path, current.holdout_path]
        frame = _concat(files, name)
        return BatchInput("dataset", name, current.hash, _hmac(files, key), frame)
    assert wanted is not None
    return _read_recorded(settings, name, wanted, key, current.hash if current else None)


def _same_version(recorded: str, wanted: str) -> bool:
    """Equal, or ``wanted`` abbreviates it (7+ digits, as `aipaas models show` prints hashes)."""
    return recorded == wanted or (len(wanted) >= 7 and recorded.startswith(wanted))


def _read_recorded(
    settings: Settings, name: str, version: str, key: bytes, current: str | None
) -> BatchInput:
    """Another version of the dataset, from the DVC cache or remote, by the md5s recorded."""
    from aipaas.training.train import find_recorded_data

    try:
        lock = find_recorded_data(name, version, settings).lock
    except DatasetNotFoundError as err:
        here = f"this checkout records {current}" if current else "this checkout records none"
        raise DatasetNotFoundError(
            f"unknown version {version} of {name} ({here}; `aipaas data version {name}`): {err}"
        ) from err
    repo = Path(settings.versioning.repo)
    paths = ingest.paths(name, settings)
    outs = {
        str(out.get("path")): str(out.get("md5"))
        for out in (lock.get(f"split@{name}") or {}).get("outs") or []
    }
    rel = [versioning.relpath(repo, f) for f in (paths.train, paths.holdout)]
    if (
        any(r not in outs for r in rel)
        or ingest.dataset_hash(outs[rel[0]], outs[rel[1]]) != version
    ):
        raise DatasetNotFoundError(
            f"the dvc.lock entries recorded for {name} version {version} do not name its "
            f"{' and '.join(rel)}; this version cannot be read"
        )
    try:
        versioning.configure_remote(repo, settings.versioning.remote_name, settings.dvc_remote_url)
        with versioning.pulled(
            repo,
            {"train": outs[rel[0]], "holdout": outs[rel[1]]},
            settings.versioning.remote_name,
            ingest.stage_environment(settings),
        ) as got:
            files = [got["train"], got["holdout"]]
            return BatchInput("dataset", name, version, _hmac(files, key), _concat(files, name))
    except VersioningError as err:
        raise DatasetNotFoundError(
            f"{name} version {version}: neither the DVC cache nor the remote "
            f"{settings.dvc_remote_url!r} holds its files ({str(err).splitlines()[0]})"
        ) from err


def _concat(files: Sequence[Path], name: str) -> pd.DataFrame:
    frames = [_read_csv(f, name) for f in files]
    return pd.concat(frames, ignore_index=True, sort=False)


def _read_file(path: Path, key: bytes) -> BatchInput:
    fmt = _format(path, "--input")
    frame = _read_parquet(path) if fmt == "parquet" else _read_csv(path, str(path))
    return BatchInput("file", str(path), _sha256([path]), _hmac([path], key), frame)


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    frame, error = validation.read_csv(path)
    if frame is None:
        report = validation.unreadable_report(what, path, error or "unreadable")
        raise DataValidationError(f"cannot read {what}: {error}", report=report)
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataValidationError(f"cannot read {path}: file not found")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as err:  # pyarrow's errors are both
        first = (str(err).strip().splitlines() or ["unreadable"])[0]
        raise DataValidationError(f"cannot read {path}: not a Parquet file ({first})") from err


def _format(path: Path, option: str) -> Format:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigurationError(
            f"{option} {path}: name a .csv or .parquet file (the suffix says which)"
        )
    return cast(Format, fmt)


def _chunks(paths: Sequence[Path]) -> Iterator[bytes]:
    for path in paths:
        with Path(path).open("rb") as fh:
            while chunk := fh.read(1 << 20):
                yield chunk


def _sha256(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for chunk in _chunks(paths):
        digest.update(chunk)
    return digest.hexdigest()


def _hmac(paths: Sequence[Path], key: bytes) -> str:
    """HMAC-SHA256 of the files' bytes under the audit key, as serving hashes a body."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for chunk in _chunks(paths):
        mac.update(chunk)
    return mac.hexdigest()


# ---------------------------------------------------------------- output_path


def output_path(
    settings: Settings, output: Path | None, scorer: LoadedModel, batch_input: BatchInput
) -> Path:
    """Where the predictions go: ``output``, or a new file under ``<home>/batch/``.

    Checked before anything is scored: a .csv or .parquet name, in a folder
    that exists, not the input itself.

    Raises:
        ConfigurationError: the output cannot be written there.
    """
    if output is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        source = batch_input.name if batch_input.kind == "dataset" else Path(batch_input.name).stem
        return (
            Path(settings.home)
            / "batch"
            / f"{scorer.name}-v{scorer.version}-{_safe(source)}-{stamp}.csv"
        )
    output = Path(output)
    _format(output, "--output")
    if not output.parent.is_dir():
        raise ConfigurationError(f"--output {output}: the folder {output.parent} does not exist")
    if not os.access(output.parent, os.W_OK):
        raise ConfigurationError(f"--output {output}: the folder {output.parent} is not writable")
    if output.is_dir():
        raise ConfigurationError(f"--output {output} is a folder; name a file in it")
    if batch_input.kind == "file" and output.resolve() == Path(batch_input.name).resolve():
        raise ConfigurationError(f"--output {output} is the input file; name another file")
    return output


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


# ---------------------------------------------------------------- prepare


def prepare(scorer: LoadedModel, batch_input: BatchInput) -> Prepared:
    """The input's rows as the model takes them, in the signature's order, with their keys.

    Raises:
        DataValidationError: a column of the signature is missing, or holds
            values of the wrong type or empty values where one is required.
    """
    frame = batch_input.frame
    missing = [f.name for f in scorer.fields if f.required and f.name not in frame.columns]
    if missing:
        raise DataValidationError(
            f"{batch_input.label} lacks {len(missing)} column(s) of {scorer.name} "
            f"v{scorer.version}'s signature: {', '.join(missing)}"
        )
    columns = [_column(frame, spec, batch_input.label) for spec in scorer.fields]
    numeric = all(spec.type != "str" for spec in scorer.fields)
    x = np.column_stack(columns).astype(np.float64 if numeric else object, copy=False)
    key_column, keys = row_keys(frame)
    return Prepared(x=np.ascontiguousarray(x), keys=keys, key_column=key_column, rows=len(frame))


def _column(frame: pd.DataFrame, spec: FieldSpec, label: str) -> np.ndarray:
    """One signature column as values the model takes, or why not."""
    if spec.name not in frame.columns:  # optional and absent
        return np.full(len(frame), np.nan if spec.type != "str" else None, dtype=object)
    values = frame[spec.name]
    if spec.type == "str":
        empty = values.isna()
        converted = values.astype(str).to_numpy(dtype=object)
        if spec.required:
            _no_empty(empty, spec.name, label)
        return converted
    numbers = pd.to_numeric(values, errors="coerce")
    wrong = numbers.isna() & values.notna()
    if wrong.any():
        examples = ", ".join(repr(v) for v in values[wrong].unique()[:3])
        raise DataValidationError(
            f"{label}: column {spec.name!r} must hold numbers ({spec.type}); "
            f"{int(wrong.sum())} row(s) do not, e.g. {examples}"
        )
    if spec.required:
        _no_empty(values.isna(), spec.name, label)
    return numbers.to_numpy(dtype=np.float64)


def _no_empty(empty: pd.Series, name: str, label: str) -> None:
    if empty.any():
        rows = ", ".join(str(i) for i in np.flatnonzero(empty.to_numpy())[:5])
        raise DataValidationError(
            f"{label}: column {name!r} is required by the signature but {int(empty.sum())} "
            f"row(s) are empty (rows {rows}, counting from 0)"
        )


def row_keys(frame: pd.DataFrame) -> tuple[str, np.ndarray]:
    """Each row's key: its id column if it has a usable one, else its content hash.

    An id column (``id`` or ``row_id``, any case) is used only when every row
    has one and no two rows share it; otherwise the content hash, which
    identical rows share (they get identical predictions).
    """
    for column in frame.columns:
        if str(column).lower() in ID_COLUMNS:
            values = frame[column]
            if values.notna().all() and values.is_unique:
                return str(column), values.to_numpy()
    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
    return HASH_KEY, np.array([f"{h:016x}" for h in hashes.tolist()], dtype=object)


# ---------------------------------------------------------------- score


@dataclass(frozen=True)
class _Shard:
    """What one task sends back."""

    frame: pd.DataFrame
    compute_s: float
    pid: int
    loaded: bool  # this task deserialised the model (the first of its job in that worker)


# In a Ray worker: the current job's model, by its object's id. A worker runs
# one task at a time and keeps only the last job's model.
_WORKER_MODEL: dict[str, LoadedModel] = {}


def _score_shard(model_box: list[Any], x: np.ndarray) -> _Shard:
    """A Ray task: score one shard; the model comes from the object store once per worker.

    ``model_box`` holds the model's ObjectRef inside a list so that Ray passes
    the reference, not the object: a worker that already holds this job's
    model does not fetch or deserialise it again.
    """
    import ray

    ref = model_box[0]
    key = ref.hex()
    model = _WORKER_MODEL.get(key)
    loaded = model is None
    if model is None:
        model = ray.get(ref)
        _WORKER_MODEL.clear()
        _WORKER_MODEL[key] = model
    t0 = time.perf_counter()
    frame = score_rows(model, x)
    return _Shard(frame, time.perf_counter() - t0, os.getpid(), loaded)


def score_rows(scorer: LoadedModel, x: np.ndarray) -> pd.DataFrame:
    """One shard's predictions: ``prediction`` and, for a classifier, ``proba_<class>``.

    ``x`` goes to :meth:`LoadedModel.predict` as an array: its row builders
    (``np.asarray``, ``r[0]``, a DataFrame) take an array as they take a list
    of rows, without a copy through Python lists.
    """
    result = scorer.predict(cast(list[list[Any]], x))
    frame = pd.DataFrame({PREDICTION: result.outputs})
    if result.probabilities is not None:
        labels = [str(c) for c in scorer.classes] if scorer.classes else None
        proba = pd.DataFrame.from_records(result.probabilities, columns=labels)
        for label in proba.columns:
            frame[f"{PROBA_PREFIX}{label}"] = proba[label].to_numpy()
    return frame


def shard_bounds(rows: int, workers: int, shard_rows: int | None = None) -> list[tuple[int, int]]:
    """``[start, stop)`` of each shard: a few per worker, each within sensible sizes."""
    if shard_rows is None:
        shard_rows = math.ceil(rows / max(1, workers * SHARDS_PER_WORKER))
        shard_rows = min(MAX_SHARD_ROWS, max(MIN_SHARD_ROWS, shard_rows))
    shard_rows = max(1, shard_rows)
    return [(start, min(rows, start + shard_rows)) for start in range(0, rows, shard_rows)]


def score(
    settings: Settings,
    scorer: LoadedModel,
    prepared: Prepared,
    *,
    workers: int | None = None,
    shard_rows: int | None = None,
) -> Scored:
    """Score every row on Ray: one task per shard, at most ``workers`` at a time.

    Ray is started or joined by :func:`aipaas.training.raycluster.ensure_ray`
    (``up``'s head for a flow run on its worker, a local Ray otherwise).
    ``workers`` defaults to the CPUs Ray sees. The model is put in the object
    store once; each shard is put there too, and the tasks read them from it.

    Raises:
        ConfigurationError: ``workers`` below 1, or Ray could not be joined.
        AipaasError: a task failed (the model raised, or its worker died).
    """
    from aipaas.training.raycluster import ensure_ray

    info = ensure_ray(settings.ray)
    if workers is not None and workers < 1:
        raise ConfigurationError(f"--workers {workers}: give at least 1")
    n = workers or max(1, int(info.cpus))
    return score_on_ray(scorer, prepared, workers=n, shard_rows=shard_rows)


def score_on_ray(
    scorer: LoadedModel, prepared: Prepared, *, workers: int, shard_rows: int | None = None
) -> Scored:
    """:func:`score` on a Ray this process is already connected to."""
    import ray
    from ray.exceptions import RayError

    t0 = time.perf_counter()
    bounds = shard_bounds(prepared.rows, workers, shard_rows)
    model_ref = ray.put(scorer)
    task = ray.remote(num_cpus=1, max_retries=1)(_score_shard)
    results: list[_Shard | None] = [None] * len(bounds)
    pending: dict[Any, int] = {}
    try:
        for i, (start, stop) in enumerate(bounds):
            # Put before waiting: the next shard is in the store when a worker frees.
            shard_ref = ray.put(prepared.x[start:stop])
            if len(pending) >= workers:
                _collect(ray.wait(list(pending), num_returns=1)[0], pending, results)
            pending[task.remote([model_ref], shard_ref)] = i
        while pending:
            _collect(ray.wait(list(pending), num_returns=1)[0], pending, results)
    except RayError as err:
        for ref in pending:
            ray.cancel(ref)
        cause = getattr(err, "cause", None) or err
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[-1]
        raise AipaasError(
            f"scoring {scorer.name} v{scorer.version} failed in a Ray worker: "
            f"{type(cause).__name__}: {first}"
        ) from err
    shards = cast(list[_Shard], results)
    return _scored(shards, prepared, time.perf_counter() - t0, on_ray=True)


def _collect(ready: list[Any], pending: dict[Any, int], results: list[_Shard | None]) -> None:
    import ray

    for ref in ready:
        results[pending.pop(ref)] = ray.get(ref)


def score_local(
    scorer: LoadedModel, prepared: Prepared, *, workers: int = 1, shard_rows: int | None = None
) -> Scored:
    """The same shards scored one after another in this process: what Ray is measured against."""
    t0 = time.perf_counter()
    shards = []
    for start, stop in shard_bounds(prepared.rows, workers, shard_rows):
        t = time.perf_counter()
        frame = score_rows(scorer, prepared.x[start:stop])
        shards.append(_Shard(frame, time.perf_counter() - t, os.getpid(), False))
    return _scored(shards, prepared, time.perf_counter() - t0, on_ray=False)


def _scored(shards: list[_Shard], prepared: Prepared, seconds: float, *, on_ray: bool) -> Scored:
    frame = pd.concat([s.frame for s in shards], ignore_index=True)
    frame.insert(0, prepared.key_column, prepared.keys)
    return Scored(
        frame=frame,
        key_column=prepared.key_column,
        rows=len(frame),
        shards=len(shards),
        workers=len({s.pid for s in shards}),
        loads=sum(s.loaded for s in shards),
        seconds=seconds,
        compute_s=sum(s.compute_s for s in shards),
        on_ray=on_ray,
    )


# ---------------------------------------------------------------- publish


def experiment_name(settings: Settings) -> str:
    """The batch experiment: beside the platform's training experiment, named after it."""
    return f"{settings.mlflow.experiment}-batch"


def encode(frame: pd.DataFrame, fmt: Format) -> bytes:
    """The predictions as the output file's bytes."""
    if fmt == "parquet":
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        return buf.getvalue()
    return frame.to_csv(index=False).encode()


def publish(
    settings: Settings,
    scorer: LoadedModel,
    batch_input: BatchInput,
    scored: Scored,
    output: Path,
    *,
    who: str,
) -> BatchResult:
    """Write the output, log the job's lineage in MLflow, audit it, then move the file in place.

    The file is written beside its destination first (a full disk fails
    here, before anything is recorded); the audit record is the job's last
    word. If the MLflow run or the audit record fails, the file is removed
    and the run (if created) is marked failed.

    Raises:
        RegistryUnavailableError: MLflow did not take the run (nothing is
            audited, no output is left: safe to retry).
    """
    output = Path(output)
    fmt = _format(output, "--output")
    data = encode(scored.frame, fmt)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.batch.tmp")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ConfigurationError(f"cannot write {output}: {err}") from err
    try:
        partial = BatchResult(
            model=scorer.name,
            model_version=scorer.version,
            input=batch_input.label,
            input_kind=batch_input.kind,
            input_hash=batch_input.version,
            output=str(output),
            output_sha256=hashlib.sha256(data).hexdigest(),
            output_format=fmt,
            rows=scored.rows,
            seconds=round(scored.seconds, 6),
            rows_per_s=round(scored.rows_per_s, 1),
            key_column=scored.key_column,
            shards=scored.shards,
            workers=scored.workers,
            who=who,
            experiment=experiment_name(settings),
            mlflow_run_id="",
            audit_seq=0,
        )
        run_id = _log_run(settings, partial, scored, scorer)
        try:
            record = audit.append_event(
                settings,
                AUDIT_EVENT,
                _audit_detail(partial, run_id),
                model=scorer.name,
                version=scorer.version,
                owner=who,
                input_hmac=batch_input.input_hmac,
                latency_ms=scored.seconds * 1000.0,
                compute_s=scored.compute_s,
            )
        except BaseException:
            _mark_failed(settings, run_id)
            raise
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    result = BatchResult(**{**partial.to_dict(), "mlflow_run_id": run_id, "audit_seq": record.seq})
    log.info("batch %s v%s: %d rows -> %s", scorer.name, scorer.version, result.rows, output)
    return result


def _audit_detail(result: BatchResult, run_id: str) -> dict[str, Any]:
    keep = (
        "input",
        "input_kind",
        "input_hash",
        "output",
        "output_sha256",
        "rows",
        "seconds",
        "key_column",
        "shards",
        "workers",
        "experiment",
    )
    return {**{k: getattr(result, k) for k in keep}, "mlflow_run_id": run_id}


def _client(settings: Settings) -> Any:
    return registry.own_client(settings)


def _experiment_id(settings: Settings, client: Any) -> str:
    return registry.side_experiment(settings, client, experiment_name(settings))


def _log_run(settings: Settings, result: BatchResult, scored: Scored, scorer: LoadedModel) -> str:
    """One run in the batch experiment: the job's lineage as params, metrics, tags and JSON."""
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    run_tags = {
        tags.KIND: KIND_BATCH,
        tags.MODEL_DEFINITION: scorer.name,
        NOTE_TAG: (
            f"{scorer.name} v{scorer.version} scored {result.rows} rows of {result.input} "
            f"-> {result.output} (sha256 {result.output_sha256[:12]}) for {result.who}"
        ),
    }
    if result.input_kind == "dataset":
        run_tags[tags.DATASET] = result.input.partition("@")[0]
        run_tags[tags.DATA_HASH] = result.input_hash
    params = {
        "model": scorer.name,
        "model_version": scorer.version,
        "model_uri": f"models:/{scorer.name}/{scorer.version}",
        "model_run_id": scorer.meta.run_id or "",
        "input": result.input,
        "input_kind": result.input_kind,
        "input_hash": result.input_hash,
        "output": result.output,
        "output_sha256": result.output_sha256,
        "output_format": result.output_format,
        "key_column": result.key_column,
        "who": result.who,
        "host": socket.gethostname(),
    }
    metrics = {
        "rows": float(result.rows),
        "seconds": scored.seconds,
        "rows_per_s": scored.rows_per_s,
        "compute_s": scored.compute_s,
        "shards": float(scored.shards),
        "workers": float(scored.workers),
    }
    run_id: str | None = None
    try:
        client = _client(settings)
        run = client.create_run(
            _experiment_id(settings, client),
            tags=run_tags,
            run_name=f"batch-{scorer.name}-v{scorer.version}",
        )
        run_id = str(run.info.run_id)
        stamp = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)[:6000]) for k, v in params.items()],
        )
        client.log_dict(run_id, {**result.to_dict(), "mlflow_run_id": run_id}, LINEAGE_ARTIFACT)
        client.set_terminated(run_id, "FINISHED")
    except (MlflowException, OSError) as err:
        if run_id is not None:
            _mark_failed(settings, run_id)
        raise RegistryUnavailableError(
            f"MLflow at {settings.mlflow_tracking_uri} did not record the batch job of "
            f"{scorer.name} v{scorer.version}: {type(err).__name__}: {err}"
        ) from err
    return run_id


def _mark_failed(settings: Settings, run_id: str) -> None:
    """Best effort: a run whose job did not finish shows as failed, not as finished."""
    from mlflow.exceptions import MlflowException

    try:
        _client(settings).set_terminated(run_id, "FAILED")
    except (MlflowException, OSError, RegistryUnavailableError):
        pass  # the server that failed us is likely down: the run stays as it is
