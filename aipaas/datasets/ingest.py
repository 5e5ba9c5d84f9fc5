"""Datasets: ingest a source, validate it, split it, read its recorded version.

A dataset is declared in ``params.yaml`` under ``datasets:`` (see
:class:`aipaas.settings.DatasetSpec`) and has a suite in
``expectations/<name>.json``. ``dvc.yaml`` runs three stages for each, every
one a call to the ``aipaas data`` CLI, which calls the functions here:

    ingest    source rows + data/incoming/<name>/*.csv -> data/<name>/raw.csv
              (a ``csv:`` source lives under data/sources/)
    validate  raw.csv against the suite                -> data/<name>/validation.json
    split     raw.csv (only if validation passed)      -> data/<name>/train.csv, holdout.csv

Labelled rows are never lost. Incoming files (the feedback a retrain exports)
are untracked files in the checkout, so :func:`push_dataset` also stores
the incoming directory in the DVC remote under the md5 that dvc.lock records
for it as ingest's dependency; before reproducing, :func:`restore_incoming`
puts back any file that version was built from and that is missing here, or
refuses (naming the directory, its md5 and how many files are gone) rather
than ingest without them. A model version records the dataset's dvc.lock
entries (:func:`version_lock`), and :func:`restore_version` rebuilds exactly
those files, dvc.lock entries included, from the remote on any checkout.

DVC owns the DAG: :func:`run_data_pipeline` asks DVC to reproduce the stages
and push their outputs, rather than calling the stage functions itself, so a
run from Prefect, from ``aipaas data run`` and a plain ``dvc repro`` are the
same run. The version training records is read back from ``dvc.lock`` by
:func:`recorded_version`.

Every setting that changes a stage's output is a DVC param of that stage
(:data:`STAGE_PARAMS`, listed the same way in ``dvc.yaml``), so DVC reruns
the stage when it changes in ``params.yaml``. The same setting changed any
other way (an ``AIPAAS_*`` variable, ``.env``) would change the data while
DVC sees nothing: :func:`stage_settings` refuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from aipaas.datasets import validation, versioning
from aipaas.exceptions import (
    ConfigurationError,
    DatasetNotFoundError,
    DataValidationError,
    VersioningError,
)
from aipaas.files import atomic_write, atomic_write_json
from aipaas.schemas import DatasetVersion, ValidationReport
from aipaas.settings import DatasetSpec, DataSettings, Settings

# Where Debian's ``fortunes`` package installs its quotes (``fortunes:`` sources).
FORTUNES_DIR = Path("/usr/share/games/fortunes")

# The stages dvc.yaml declares for each dataset, in order.
STAGES = ("ingest", "validate", "split")

# Every setting a stage's output depends on, as its params.yaml key (``{dataset}``
# is the stage's dataset). dvc.yaml lists exactly these under each stage's
# ``params:``. validate reads none: its output follows from raw.csv and the suite.
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "ingest": ("datasets.{dataset}",),
    "validate": (),
    "split": ("data.holdout_fraction", "data.seed", "datasets.{dataset}"),
}


@dataclass(frozen=True)
class DatasetPaths:
    """Where a dataset's files live: one place computes them for every stage."""

    dir: Path
    raw: Path
    validation: Path
    train: Path
    holdout: Path
    incoming: Path
    suite: Path


@dataclass(frozen=True)
class DatasetStatus:
    """One row of ``aipaas data list``: a declared dataset and what is recorded of it."""

    name: str
    source: str
    target: str
    suite: str  # "passed", "FAILED" or "not run"
    hash: str | None = None
    rows: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- stages


def ingest(dataset: str, settings: Settings) -> Path:
    """Write ``raw.csv``: the source rows, then every CSV in ``data/incoming/<dataset>/``.

    Incoming files (new labelled rows, e.g. feedback the retrain flow exports)
    are appended in name order. Their columns are not checked here: the
    validate stage does that, with a readable report.

    Raises:
        DataValidationError: a source or incoming file cannot be read as CSV.
    """
    ds = spec(dataset, settings)
    p = paths(dataset, settings)
    frames = [load_source(ds, settings, dataset=dataset)]
    frames += [
        _read_table(file, dataset, f"incoming file for {dataset}", "; fix or remove it and rerun")
        for file in incoming_files(dataset, settings)
    ]
    raw = pd.concat(frames, ignore_index=True, sort=False)
    _write_csv(raw, p.raw)
    return p.raw


def validate(
    dataset: str,
    settings: Settings,
    path: Path | None = None,
) -> ValidationReport:
    """Validate a file (default: the dataset's ``raw.csv``) against its suite.

    Validating ``raw.csv`` is the validate stage: the report is also written to
    ``validation.json``, which the split stage and :func:`recorded_version` read.
    Another ``path`` is an ad-hoc check and records nothing. Data Docs go to
    ``<home>/data_docs``. Returns the report whether or not it passed; callers
    decide how loud to be.
    """
    spec(dataset, settings)
    p = paths(dataset, settings)
    target = Path(path) if path is not None else p.raw
    report = validation.validate_file(
        target, p.suite, dataset, docs_dir=Path(settings.home) / "data_docs"
    )
    if path is None or _same_file(target, p.raw):
        atomic_write_json(p.validation, report.to_dict())
    return report


def split(dataset: str, settings: Settings) -> tuple[Path, Path]:
    """Write ``train.csv`` and ``holdout.csv``; refuse unless the suite passed.

    A row's side is a function of its content alone (:func:`holdout_rows`),
    so the same raw data always gives the same files (and the same DVC
    hash), and appending rows (labelled feedback) never moves an old row:
    a champion is never scored on rows it was trained on when a challenger
    trained on the grown dataset is compared with it on the new holdout.
    An earlier random split reshuffled every row on each append; a retrained
    text model was then rejected against a champion whose score on the new
    holdout (0.89) was inflated by its own training rows (0.67 on its own).

    Raises:
        DataValidationError: validation failed, or ran on another raw file,
            or a class of the target is missing from one side.
    """
    ds = spec(dataset, settings)
    p = paths(dataset, settings)
    report = _passed_report(dataset, settings, "refusing to split")
    raw = pd.read_csv(p.raw)
    if len(raw) != report.rows:
        raise DataValidationError(
            f"{p.raw} has {len(raw)} rows but was validated with {report.rows}; "
            f"run `aipaas data validate {dataset}` again",
            report=report,
        )
    holdout_mask = holdout_rows(raw, settings.data.holdout_fraction, settings.data.seed)
    train, holdout = raw[~holdout_mask], raw[holdout_mask]
    lonely = one_sided_classes(train, holdout, ds.target) if ds.task == "classification" else []
    if lonely:
        raise DataValidationError(
            f"cannot split {dataset}: class(es) {', '.join(lonely)} of {ds.target!r} "
            "would be missing from train or holdout; add rows of them",
            report=report,
        )
    _write_csv(train, p.train)
    _write_csv(holdout, p.holdout)
    return p.train, p.holdout


def one_sided_classes(train: pd.DataFrame, holdout: pd.DataFrame, target: str) -> list[str]:
    """The classes of ``target`` found on only one side of a split."""
    seen_train, seen_holdout = set(train[target]), set(holdout[target])
    return sorted(str(c) for c in seen_train ^ seen_holdout)


def holdout_rows(frame: pd.DataFrame, fraction: float, seed: int) -> pd.Series:
    """Which rows are holdout: a keyed hash of each row's content below ``fraction``.

    Identical rows share a side (a duplicate never leaks across), and the
    seed picks another, equally stable, partition. Class proportions are
    those of the data up to sampling noise (about +-3 rows in 100 here),
    not exact as a stratified shuffle's are.
    """
    key = f"aipaas-split{seed:04d}"[-16:].rjust(16, "0")
    hashes = pd.util.hash_pandas_object(frame, index=False, hash_key=key)
    unit = (hashes % 1_000_003).astype("float64") / 1_000_003
    return pd.Series(unit.to_numpy() < fraction, index=frame.index)


# ---------------------------------------------------------------- the DVC pipeline


def run_data_pipeline(dataset: str, settings: Settings, push: bool = True) -> DatasetVersion:
    """Reproduce the dataset's stages with DVC, push them, and return the version.

    What ``aipaas data run`` calls; the Prefect flow calls the same three
    steps as separate tasks so that only the push is retried.

    Raises:
        ConfigurationError: a stage param is overridden outside params.yaml.
        DataValidationError: the suite failed; nothing is split, locked or pushed.
        VersioningError: DVC failed for another reason (its output is in the message).
    """
    reproduce(dataset, settings)
    if push:
        push_dataset(dataset, settings)
    return recorded_version(dataset, settings)


def reproduce(dataset: str, settings: Settings) -> None:
    """``dvc repro split@<dataset>``: rerun what changed, record it in dvc.lock.

    DVC decides what to rerun (changed code, params, suite or incoming files).
    The stages run in the same Python environment as this process and read
    their params from the repository's ``params.yaml``; a setting of theirs
    that this process overrides is refused first, since the stages would
    either ignore it or change the data behind DVC's back.

    Raises:
        ConfigurationError: a stage param differs from params.yaml.
        DataValidationError: the suite failed (carries the report); DVC stopped
            before split, so the failed data is neither split nor locked as good.
        VersioningError: DVC failed for another reason (its output is in the message).
    """
    for stage in STAGES:
        stage_settings(stage, dataset, settings)
    p = paths(dataset, settings)
    # DVC refuses a missing dependency: these directories exist even when empty.
    p.incoming.mkdir(parents=True, exist_ok=True)
    sources_dir(settings).mkdir(parents=True, exist_ok=True)
    restore_incoming(dataset, settings)
    repo = Path(settings.versioning.repo)
    try:
        versioning.repro(repo, [f"split@{dataset}"], env=stage_environment(settings))
    except VersioningError as err:
        # Only a failure of the validate stage is a suite failure; an older
        # failed report must not be blamed for, say, a broken ingest.
        report = _failed_report(dataset, settings) if f"validate@{dataset}" in str(err) else None
        if report is None:
            raise
        raise DataValidationError(
            f"{dataset} failed its suite: "
            + (report.error or f"{len(report.failed)} expectations failed")
            + "; nothing was split or pushed",
            report=report,
        ) from err


def push_dataset(dataset: str, settings: Settings) -> None:
    """Send the dataset's stage outputs and its incoming files to the DVC remote.

    The incoming files are stored under the md5 dvc.lock records for them, so
    the version just reproduced can be rebuilt, labelled rows included, from
    the remote alone (:func:`restore_incoming`, :func:`restore_version`).

    Raises:
        RemoteError: the remote did not take the push (worth a retry).
        VersioningError: the incoming files changed since the last reproduce,
            or anything else DVC refused.
    """
    repo = _configured_repo(settings)
    versioning.push(
        repo,
        [f"{stage}@{dataset}" for stage in STAGES],
        remote=settings.versioning.remote_name,
        env=stage_environment(settings),
    )
    recorded = incoming_record(dataset, settings)
    if recorded is None or recorded[1] == 0:
        return
    stored = versioning.store(
        repo,
        paths(dataset, settings).incoming,
        settings.versioning.remote_name,
        env=stage_environment(settings),
    )
    if stored != recorded[0]:
        raise VersioningError(
            f"{paths(dataset, settings).incoming} changed since dvc.lock recorded it "
            f"({stored} here, {recorded[0]} recorded); run `aipaas data run {dataset}` "
            "to version the new files"
        )


# ---------------------------------------------------------------- durability


def incoming_record(dataset: str, settings: Settings) -> tuple[str, int] | None:
    """``(md5, nfiles)`` of the incoming directory the recorded version was ingested from.

    Read from ingest's dependency in dvc.lock; None before the first run.
    """
    repo = Path(settings.versioning.repo)
    rel = versioning.relpath(repo, paths(dataset, settings).incoming)
    entry = versioning.lock_entry(repo, f"ingest@{dataset}") or {}
    for dep in entry.get("deps") or []:
        if dep.get("path") == rel and "md5" in dep:
            return str(dep["md5"]), int(dep.get("nfiles") or 0)
    return None


def restore_incoming(dataset: str, settings: Settings) -> list[Path]:
    """Put back the incoming files the recorded version was built from and that are gone.

    Files present are left as they are (a new export, an edit: DVC sees the
    change and records a new version). A file missing here comes back from
    the DVC cache, else the remote. If it cannot, ingesting would silently
    train on fewer labelled rows than the last version, so it is refused.

    Returns:
        The files put back.

    Raises:
        DatasetNotFoundError: recorded files are missing and neither the
            cache nor the remote has them.
    """
    recorded = incoming_record(dataset, settings)
    if recorded is None or recorded[1] == 0:
        return []
    md5, nfiles = recorded
    p = paths(dataset, settings)
    repo = _configured_repo(settings)
    try:
        with versioning.pulled(
            repo, {"incoming": md5}, settings.versioning.remote_name, stage_environment(settings)
        ) as got:
            return _copy_missing(got["incoming"], p.incoming)
    except VersioningError as err:
        present = len(incoming_files(dataset, settings))
        if present >= nfiles:
            return []  # nothing is missing; the remote is only unreachable
        raise DatasetNotFoundError(
            f"the recorded version of {dataset} was ingested with {nfiles} labelled file(s) "
            f"in {p.incoming} (DVC md5 {md5}); {nfiles - present} of them are missing here "
            f"and neither the DVC cache nor the remote {settings.dvc_remote_url!r} has them. "
            "Ingesting now would drop those rows, so it is refused: put the files back, or "
            f"point versioning.remote_url at the remote they were pushed to, or restore a "
            f"model's data with `aipaas data restore {dataset} --model NAME --model-version N`"
        ) from err


def version_lock(dataset: str, settings: Settings, data_hash: str) -> dict[str, Any] | None:
    """The dvc.lock entries of the dataset's stages, if they record version ``data_hash``.

    What a model version keeps so that its data can be rebuilt anywhere: the
    md5s of every stage output and of the incoming files. None when dvc.lock
    records another version (the data did not come from this repository).
    """
    repo = Path(settings.versioning.repo)
    entries = {
        f"{stage}@{dataset}": versioning.lock_entry(repo, f"{stage}@{dataset}") for stage in STAGES
    }
    if any(e is None for e in entries.values()):
        return None
    p = paths(dataset, settings)
    outs = versioning.locked_outs(repo, f"split@{dataset}")
    rel = [versioning.relpath(repo, f) for f in (p.train, p.holdout)]
    if any(r not in outs for r in rel) or dataset_hash(outs[rel[0]], outs[rel[1]]) != data_hash:
        return None
    return entries


def restore_version(
    dataset: str, settings: Settings, lock: dict[str, Any], data_hash: str
) -> DatasetVersion:
    """Rebuild the dataset version ``lock`` names, from the cache or the DVC remote.

    Every stage output is replaced by the recorded file, missing incoming
    files are put back, and the entries go into dvc.lock, so that this
    checkout's recorded version is the restored one (``aipaas data version``,
    training). The result's hash is checked against ``data_hash``.

    Raises:
        DatasetNotFoundError: ``lock`` lacks a stage of the dataset, or the
            remote does not hold a recorded file.
        VersioningError: the restored files do not hash to ``data_hash``.
    """
    spec(dataset, settings)
    missing = [f"{st}@{dataset}" for st in STAGES if f"{st}@{dataset}" not in lock]
    if missing:
        raise DatasetNotFoundError(
            f"the recorded dvc.lock entries of {dataset} lack {', '.join(missing)}; "
            "this version cannot be restored"
        )
    repo = _configured_repo(settings)
    objects = {
        str(out["path"]): str(out["md5"])
        for stage in STAGES
        for out in lock[f"{stage}@{dataset}"].get("outs") or []
    }
    incoming_rel = versioning.relpath(repo, paths(dataset, settings).incoming)
    for dep in lock[f"ingest@{dataset}"].get("deps") or []:
        if dep.get("path") == incoming_rel and int(dep.get("nfiles") or 0) > 0:
            objects[incoming_rel] = str(dep["md5"])
    try:
        with versioning.pulled(
            repo, objects, settings.versioning.remote_name, stage_environment(settings)
        ) as got:
            for rel, copy in got.items():
                if rel == incoming_rel:
                    _copy_missing(copy, repo / rel)
                else:
                    atomic_write(repo / rel, copy.read_bytes())
    except VersioningError as err:
        raise DatasetNotFoundError(
            f"{dataset} version {data_hash}: the DVC remote {settings.dvc_remote_url!r} "
            f"does not hold every recorded file ({err})"
        ) from err
    versioning.write_lock_entries(repo, {k: lock[k] for k in lock if k.endswith(f"@{dataset}")})
    version = recorded_version(dataset, settings)
    if version.hash != data_hash:
        raise VersioningError(
            f"restored {dataset} hashes to {version.hash}, not {data_hash}; the recorded "
            "entries are inconsistent"
        )
    return version


def _configured_repo(settings: Settings) -> Path:
    """The DVC repository, with the settings' remote as its default."""
    repo = Path(settings.versioning.repo)
    versioning.configure_remote(repo, settings.versioning.remote_name, settings.dvc_remote_url)
    return repo


def _copy_missing(source: Path, dest: Path) -> list[Path]:
    """Copy each file under ``source`` that ``dest`` lacks; return the files written."""
    written = []
    for file in sorted(f for f in source.rglob("*") if f.is_file()):
        target = dest / file.relative_to(source)
        if not target.exists():
            atomic_write(target, file.read_bytes())
            written.append(target)
    return written


def recorded_version(dataset: str, settings: Settings) -> DatasetVersion:
    """The recorded version of the prepared data: what training uses and records.

    The hash combines the md5s that ``dvc.lock`` records for ``train.csv`` and
    ``holdout.csv``; the files on disk must still match them.

    Raises:
        DatasetNotFoundError: the dataset was never produced, or the files on
            disk are not the ones dvc.lock records (run ``dvc checkout`` or
            ``aipaas data run``).
        DataValidationError: the latest validation of this dataset failed.
    """
    ds = spec(dataset, settings)
    p = paths(dataset, settings)
    train_md5, holdout_md5 = _locked_md5s(dataset, settings)
    report = _passed_report(dataset, settings, "training on it is refused")
    repo = Path(settings.versioning.repo)
    return DatasetVersion(
        name=dataset,
        hash=dataset_hash(train_md5, holdout_md5),
        rows=_count_rows(p.train) + _count_rows(p.holdout),
        suite_passed=report.success,
        train_path=p.train,
        holdout_path=p.holdout,
        target=ds.target,
        git_commit=versioning.git_commit(repo),
    )


def list_datasets(settings: Settings) -> list[DatasetStatus]:
    """Every declared dataset with its recorded version, if any (for ``aipaas data list``)."""
    return [dataset_status(name, settings) for name in sorted(settings.datasets)]


def dataset_status(dataset: str, settings: Settings) -> DatasetStatus:
    """A declared dataset and whether a version that passed its suite is recorded."""
    ds = spec(dataset, settings)
    try:
        v = recorded_version(dataset, settings)
    except DataValidationError:
        return DatasetStatus(dataset, ds.source, ds.target, suite="FAILED")
    except DatasetNotFoundError:
        return DatasetStatus(dataset, ds.source, ds.target, suite="not run")
    return DatasetStatus(dataset, ds.source, ds.target, suite="passed", hash=v.hash, rows=v.rows)


# ---------------------------------------------------------------- stage params


def stage_settings(stage: str, dataset: str, settings: Settings) -> Settings:
    """The settings a DVC stage runs with: its params exactly as ``params.yaml`` holds them.

    ``params.yaml`` beside dvc.yaml is the file DVC tracks, and the stages'
    own process reads it (:func:`stage_environment` points ``AIPAAS_PARAMS``
    at it). A stage param (:data:`STAGE_PARAMS`) that these settings hold
    differently, from an ``AIPAAS_*`` variable, ``.env`` or another params
    file, is refused rather than used: DVC would record a new version of the
    data without knowing why it changed.

    Returns:
        ``settings`` itself, once each of the stage's params is checked to
        equal the value in params.yaml.

    Raises:
        DatasetNotFoundError: the dataset is not declared.
        ConfigurationError: params.yaml is missing or invalid, or a stage param differs.
    """
    spec(dataset, settings)
    keys = [key.format(dataset=dataset) for key in STAGE_PARAMS[stage]]
    if not keys:
        return settings
    file = versioning.params_file(Path(settings.versioning.repo))
    tracked = tracked_params(dataset, file)
    current = current_params(dataset, settings)
    for key in keys:
        if tracked[key] != current[key]:
            raise ConfigurationError(_override_message(key, current[key], tracked[key], file))
    return settings


def tracked_params(dataset: str, params_file: Path) -> dict[str, Any]:
    """The dataset's stage params as ``params_file`` holds them (defaults filled in).

    Raises:
        ConfigurationError: the file is missing or its values are invalid.
    """
    params = versioning.read_params(params_file)
    try:
        data = DataSettings(**(params.get("data") or {}))
        entry = (params.get("datasets") or {}).get(dataset)
        ds = DatasetSpec(**entry) if entry is not None else None
    except (ValidationError, TypeError) as err:
        raise ConfigurationError(f"{params_file}: invalid data settings: {err}") from err
    return _params(dataset, data, ds)


def current_params(dataset: str, settings: Settings) -> dict[str, Any]:
    """The dataset's stage params as ``settings`` hold them."""
    return _params(dataset, settings.data, settings.datasets.get(dataset))


def stage_environment(settings: Settings) -> dict[str, str]:
    """Environment for ``dvc repro``/``push``: this Python, this project's locations.

    Locations (home, data and suite directories, the repository) point the
    stages at the same project; params are not passed: the stages read them
    from the repository's ``params.yaml``, the file DVC tracks.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["AIPAAS_HOME"] = str(settings.home)
    env["AIPAAS_DATA__DIR"] = str(settings.data.dir)
    env["AIPAAS_DATA__EXPECTATIONS_DIR"] = str(settings.data.expectations_dir)
    env["AIPAAS_VERSIONING__REPO"] = str(settings.versioning.repo)
    env["AIPAAS_PARAMS"] = str(versioning.params_file(Path(settings.versioning.repo)))
    env.update(versioning.DVC_ENV)
    return env


# ---------------------------------------------------------------- declarations and paths


def spec(dataset: str, settings: Settings) -> DatasetSpec:
    """The dataset's declaration from params.yaml.

    Raises:
        DatasetNotFoundError: the dataset is not declared.
    """
    try:
        return settings.datasets[dataset]
    except KeyError:
        known = ", ".join(sorted(settings.datasets)) or "none"
        raise DatasetNotFoundError(
            f"unknown dataset {dataset!r} (declared: {known}); declare it in params.yaml "
            f"under datasets: and add expectations/{dataset}.json"
        ) from None


def paths(dataset: str, settings: Settings) -> DatasetPaths:
    base = Path(settings.data.dir) / dataset
    return DatasetPaths(
        dir=base,
        raw=base / "raw.csv",
        validation=base / "validation.json",
        train=base / "train.csv",
        holdout=base / "holdout.csv",
        incoming=Path(settings.data.dir) / "incoming" / dataset,
        suite=validation.suite_path(settings.data.expectations_dir, dataset),
    )


def incoming_files(dataset: str, settings: Settings) -> list[Path]:
    """The CSV files waiting in the dataset's incoming directory, in name order."""
    incoming = paths(dataset, settings).incoming
    return sorted(incoming.glob("*.csv")) if incoming.is_dir() else []


def read_report(dataset: str, settings: Settings) -> ValidationReport:
    """The validate stage's last report.

    Raises:
        DatasetNotFoundError: validation never ran for this dataset.
    """
    file = paths(dataset, settings).validation
    if not file.is_file():
        raise DatasetNotFoundError(
            f"{dataset} has not been validated ({file} is missing); run `aipaas data run {dataset}`"
        )
    try:
        return validation.report_from_dict(json.loads(file.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise DatasetNotFoundError(
            f"{file} is not a validation report ({err}); rerun `aipaas data run {dataset}`"
        ) from err


def dataset_hash(train_md5: str, holdout_md5: str) -> str:
    """One hash for the prepared dataset, from DVC's md5s of its two files."""
    return hashlib.md5(f"{train_md5}\n{holdout_md5}\n".encode()).hexdigest()  # noqa: S324


# ---------------------------------------------------------------- sources


def sources_dir(settings: Settings) -> Path:
    """Where ``csv:`` source files live: ``data/sources/``, an ingest dependency."""
    return Path(settings.data.dir) / "sources"


def snake_case(name: str) -> str:
    """``"mean radius"`` -> ``"mean_radius"``: column names safe for every tool."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", name.strip()).strip("_").lower()


def load_source(spec: DatasetSpec, settings: Settings, dataset: str = "") -> pd.DataFrame:
    """The rows a dataset's ``source`` names.

    Args:
        spec: The dataset's declaration.
        settings: Where ``csv:`` sources live.
        dataset: The dataset's name, for the report of an unreadable source.

    Raises:
        ConfigurationError: the source kind is unknown.
        DataValidationError: a ``csv:`` source cannot be read.
    """
    kind, _, arg = spec.source.partition(":")
    if kind == "sklearn" and arg:
        return _load_sklearn(arg, spec.target)
    if kind == "fortunes" and arg:
        return load_fortunes(_categories(arg), spec.target, FORTUNES_DIR)
    if kind == "csv" and arg:
        file = _source_file(arg, Path(settings.versioning.repo), sources_dir(settings))
        return _read_table(file, dataset or spec.source, f"source csv:{arg}")
    raise ConfigurationError(
        f"unknown dataset source {spec.source!r}: use 'sklearn:<name>', 'csv:<path>' "
        "or 'fortunes:<category>,<category>,...'"
    )


def _load_sklearn(name: str, target: str) -> pd.DataFrame:
    """A dataset scikit-learn ships with the package: offline, no download."""
    import sklearn.datasets

    loader = getattr(sklearn.datasets, f"load_{name}", None)
    if loader is None:
        raise ConfigurationError(
            f"source sklearn:{name}: scikit-learn has no bundled load_{name}() "
            "(try breast_cancer, iris, wine, diabetes)"
        )
    bunch = loader(as_frame=True)
    frame = bunch.data.rename(columns=snake_case)
    labels = bunch.target
    names = getattr(bunch, "target_names", None)
    if names is not None and len(names) and not isinstance(names[0], int | float):
        labels = labels.map(dict(enumerate(str(n) for n in names)))
    frame[target] = labels.to_numpy()
    return frame


def load_fortunes(categories: Sequence[str], target: str, directory: Path) -> pd.DataFrame:
    """Quotes from Debian's ``fortunes`` package, labelled with their category.

    Each category is a file of entries separated by lines holding only ``%``.
    Text is normalised (overstrike sequences and runs of whitespace collapsed,
    the ``-- author`` attribution kept as part of the quote), then
    deduplicated: a text filed under two categories has no single label and
    is dropped, a repeat within one category is kept once. Rows come out in
    category order, then file order, so the same files always give the same
    ``raw.csv``. Nothing is downloaded: the files ship with the package.

    Raises:
        DatasetNotFoundError: a category's file is missing (the package is not installed).
    """
    rows = [
        (_normalise(entry), category)
        for category in categories
        for entry in _fortune_entries(directory / category, category)
    ]
    frame = pd.DataFrame(rows, columns=["text", target])
    frame = frame[frame["text"] != ""].drop_duplicates()
    labels = frame.groupby("text")[target].nunique()
    ambiguous = set(labels.index[labels > 1])
    frame = frame[~frame["text"].isin(ambiguous)]
    return frame.reset_index(drop=True)


def _categories(arg: str) -> list[str]:
    names = [c.strip() for c in arg.split(",") if c.strip()]
    bad = [c for c in names if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", c)]
    if not names or bad:
        raise ConfigurationError(
            f"source fortunes:{arg}: name categories as files of {FORTUNES_DIR}, "
            "comma-separated, e.g. fortunes:computers,science"
        )
    return names


def _fortune_entries(file: Path, category: str) -> list[str]:
    """The raw entries of one fortunes file."""
    if not file.is_file():
        raise DatasetNotFoundError(
            f"source fortunes:{category}: {file} is missing; it ships in Debian's "
            "`fortunes` package (apt-get install fortunes)"
        )
    text = file.read_bytes().decode("utf-8", errors="replace")
    return re.split(r"^%[ \t]*$", text, flags=re.MULTILINE)


def _normalise(entry: str) -> str:
    """One line of plain text: overstriking (``x\\bx``, ``_\\bx``) undone, whitespace collapsed."""
    entry = re.sub(r".\x08", "", entry, flags=re.DOTALL).replace("\b", "")
    return " ".join(entry.split())


def _source_file(path: str, repo: Path, sources: Path) -> Path:
    """A team's own file. It must live under ``data/sources/``, a dependency of
    every ingest stage, so that DVC reruns ingest when the file changes."""
    file = Path(path)
    if not file.is_absolute():
        file = repo / file
    if not file.resolve().is_relative_to(sources.resolve()):
        raise ConfigurationError(
            f"source csv:{path}: put the file under {sources} (and name it relative to the "
            "repository, e.g. csv:data/sources/<file>.csv) so that DVC tracks it as a "
            "dependency of ingest"
        )
    return file


# ---------------------------------------------------------------- helpers


def _read_table(file: Path, dataset: str, what: str, hint: str = "") -> pd.DataFrame:
    """A CSV a stage reads, or a DataValidationError whose report says why it cannot be read."""
    frame, error = validation.read_csv(file)
    if frame is None:
        report = validation.unreadable_report(dataset, file, error or "unreadable")
        raise DataValidationError(f"{what}: {error}{hint}", report=report)
    return frame


def _passed_report(dataset: str, settings: Settings, consequence: str) -> ValidationReport:
    """The recorded report, which must have passed.

    Raises:
        DatasetNotFoundError: validation never ran.
        DataValidationError: it failed.
    """
    report = read_report(dataset, settings)
    if not report.success:
        docs = f" and {report.data_docs}" if report.data_docs else ""
        raise DataValidationError(
            f"{dataset} failed its suite ({len(report.failed)} expectations); {consequence}. "
            f"See `aipaas data validate {dataset}`{docs}; fix the data and run "
            f"`aipaas data run {dataset}`",
            report=report,
        )
    return report


def _failed_report(dataset: str, settings: Settings) -> ValidationReport | None:
    try:
        report = read_report(dataset, settings)
    except DatasetNotFoundError:
        return None
    return None if report.success else report


def _locked_md5s(dataset: str, settings: Settings) -> tuple[str, str]:
    """The md5s dvc.lock records for train.csv and holdout.csv, checked against the files.

    Raises:
        DatasetNotFoundError: nothing is recorded, or the files are missing or differ.
    """
    p = paths(dataset, settings)
    repo = Path(settings.versioning.repo)
    outs = versioning.locked_outs(repo, f"split@{dataset}")
    files = (p.train, p.holdout)
    rel = [versioning.relpath(repo, file) for file in files]
    if any(r not in outs for r in rel):
        raise DatasetNotFoundError(
            f"no recorded version of {dataset} in {repo / 'dvc.lock'}; "
            f"run `aipaas data run {dataset}`"
        )
    for file, r in zip(files, rel, strict=True):
        if not file.is_file():
            raise DatasetNotFoundError(
                f"{file} is missing; run `dvc pull` (or `aipaas data run {dataset}`)"
            )
        if versioning.file_md5(file) != outs[r]:
            raise DatasetNotFoundError(
                f"{file} differs from the version dvc.lock records; run `dvc checkout` "
                f"to restore it or `aipaas data run {dataset}` to record a new one"
            )
    return outs[rel[0]], outs[rel[1]]


def _params(dataset: str, data: DataSettings, ds: DatasetSpec | None) -> dict[str, Any]:
    """Every stage param of the dataset by its params.yaml key (None: not declared)."""
    return {
        "data.holdout_fraction": data.holdout_fraction,
        "data.seed": data.seed,
        f"datasets.{dataset}": ds.model_dump() if ds is not None else None,
    }


def _override_message(key: str, current: Any, tracked: Any, file: Path) -> str:
    variable = "AIPAAS_" + key.upper().replace(".", "__")
    shown = "not declared" if tracked is None else repr(tracked)
    return (
        f"{key} is {current!r} in this process's settings but {shown} in {file}, the params "
        f"file DVC tracks. An override from the environment or .env (e.g. {variable}) "
        "would change the data without DVC seeing a params change, so it is refused: "
        f"remove the override and set {key} in {file} instead (AIPAAS_PARAMS, if set, "
        "must point at that file)"
    )


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write atomically: a crash never leaves a half-written file that DVC would hash."""
    atomic_write(path, frame.to_csv(index=False))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _count_rows(path: Path) -> int:
    # Parsed, not line-counted: a quoted text field may hold newlines.
    return len(pd.read_csv(path, usecols=[0]))
