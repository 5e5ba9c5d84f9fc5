"""Datasets: ingest a source, validate it, split it, read its recorded version.

A dataset is declared in ``params.yaml`` under ``datasets:`` (see
:class:`aipaas.settings.DatasetSpec`) and has a suite in
``expectations/<name>.json``. ``dvc.yaml`` runs three stages for each, every
one a call to the ``aipaas data`` CLI, which calls the functions here:

    ingest    source rows + data/incoming/<name>/*.csv -> data/<name>/raw.csv
              (a ``csv:`` source lives under data/sources/)
    validate  raw.csv against the suite                -> data/<name>/validation.json
    split     raw.csv (only if validation passed)      -> data/<name>/train.csv, holdout.csv

DVC owns the DAG: :func:`run_data_pipeline` asks DVC to reproduce the stages
and push their outputs, rather than calling the stage functions itself, so a
run from Prefect, from ``aipaas data run`` and a plain ``dvc repro`` are the
same run. The version training records is read back from ``dvc.lock`` by
:func:`recorded_version`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from aipaas.datasets import validation, versioning
from aipaas.exceptions import (
    ConfigurationError,
    DatasetNotFoundError,
    DataValidationError,
    VersioningError,
)
from aipaas.schemas import DatasetVersion, ValidationReport
from aipaas.settings import DatasetSpec, Settings

# The stages dvc.yaml declares for each dataset, in order.
STAGES = ("ingest", "validate", "split")


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


# ---------------------------------------------------------------- sources


def sources_dir(settings: Settings) -> Path:
    """Where ``csv:`` source files live: ``data/sources/``, an ingest dependency."""
    return Path(settings.data.dir) / "sources"


def snake_case(name: str) -> str:
    """``"mean radius"`` -> ``"mean_radius"``: column names safe for every tool."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", name.strip()).strip("_").lower()


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


def _load_csv(path: str, repo: Path, sources: Path) -> pd.DataFrame:
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
    frame, error = validation.read_csv(file)
    if frame is None:
        raise DataValidationError(f"source csv:{path}: {error}")
    return frame


def load_source(spec: DatasetSpec, settings: Settings) -> pd.DataFrame:
    """The rows a dataset's ``source`` names.

    Raises:
        ConfigurationError: the source kind is unknown.
        DataValidationError: a ``csv:`` source cannot be read.
    """
    kind, _, arg = spec.source.partition(":")
    if kind == "sklearn" and arg:
        return _load_sklearn(arg, spec.target)
    if kind == "csv" and arg:
        return _load_csv(arg, Path(settings.versioning.repo), sources_dir(settings))
    raise ConfigurationError(
        f"unknown dataset source {spec.source!r}: use 'sklearn:<name>' or 'csv:<path>'"
    )


# ---------------------------------------------------------------- stages


def ingest(dataset: str, settings: Settings) -> Path:
    """Write ``raw.csv``: the source rows, then every CSV in ``data/incoming/<dataset>/``.

    Incoming files (new labelled rows, e.g. feedback the retrain flow exports)
    are appended in name order. Their columns are not checked here: the
    validate stage does that, with a readable report.

    Raises:
        DataValidationError: an incoming file cannot be read as CSV.
    """
    ds = spec(dataset, settings)
    p = paths(dataset, settings)
    frames = [load_source(ds, settings)]
    for file in incoming_files(dataset, settings):
        frame, error = validation.read_csv(file)
        if frame is None:
            raise DataValidationError(
                f"incoming file for {dataset}: {error}; fix or remove it and rerun"
            )
        frames.append(frame)
    raw = pd.concat(frames, ignore_index=True, sort=False)
    p.dir.mkdir(parents=True, exist_ok=True)
    _write_csv(raw, p.raw)
    return p.raw


def incoming_files(dataset: str, settings: Settings) -> list[Path]:
    incoming = paths(dataset, settings).incoming
    return sorted(incoming.glob("*.csv")) if incoming.is_dir() else []


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
        p.dir.mkdir(parents=True, exist_ok=True)
        p.validation.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


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


def split(dataset: str, settings: Settings) -> tuple[Path, Path]:
    """Write ``train.csv`` and ``holdout.csv``; refuse unless the suite passed.

    The split is stratified on the target for classification, with the seed
    and holdout fraction of ``settings.data``, so the same raw data always
    gives the same files (and the same DVC hash).

    Raises:
        DataValidationError: validation failed, or ran on another raw file.
    """
    from sklearn.model_selection import train_test_split

    ds = spec(dataset, settings)
    p = paths(dataset, settings)
    report = read_report(dataset, settings)
    if not report.success:
        raise DataValidationError(
            f"{dataset} failed its suite ({len(report.failed)} expectations); "
            "refusing to split. See `aipaas data validate "
            f"{dataset}`" + (f" and {report.data_docs}" if report.data_docs else ""),
            report=report,
        )
    raw = pd.read_csv(p.raw)
    if len(raw) != report.rows:
        raise DataValidationError(
            f"{p.raw} has {len(raw)} rows but was validated with {report.rows}; "
            f"run `aipaas data validate {dataset}` again",
            report=report,
        )
    stratify = raw[ds.target] if ds.task == "classification" else None
    try:
        train, holdout = train_test_split(
            raw,
            test_size=settings.data.holdout_fraction,
            random_state=settings.data.seed,
            stratify=stratify,
        )
    except ValueError as err:
        raise DataValidationError(
            f"cannot split {dataset} stratified on {ds.target!r}: {err}", report=report
        ) from err
    _write_csv(train, p.train)
    _write_csv(holdout, p.holdout)
    return p.train, p.holdout


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write atomically: a crash never leaves a half-written file that DVC would hash."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


# ---------------------------------------------------------------- versions


def dataset_hash(train_md5: str, holdout_md5: str) -> str:
    """One hash for the prepared dataset, from DVC's md5s of its two files."""
    return hashlib.md5(f"{train_md5}\n{holdout_md5}\n".encode()).hexdigest()  # noqa: S324


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
    repo = Path(settings.versioning.repo)
    outs = versioning.locked_outs(repo, f"split@{dataset}")
    rel = {name: versioning.relpath(repo, getattr(p, name)) for name in ("train", "holdout")}
    if not outs or any(r not in outs for r in rel.values()):
        raise DatasetNotFoundError(
            f"no recorded version of {dataset} in {repo / 'dvc.lock'}; "
            f"run `aipaas data run {dataset}`"
        )
    for name, r in rel.items():
        file = getattr(p, name)
        if not file.is_file():
            raise DatasetNotFoundError(
                f"{file} is missing; run `dvc pull` (or `aipaas data run {dataset}`)"
            )
        if versioning.file_md5(file) != outs[r]:
            raise DatasetNotFoundError(
                f"{file} differs from the version dvc.lock records; run `dvc checkout` "
                f"to restore it or `aipaas data run {dataset}` to record a new one"
            )
    report = read_report(dataset, settings)
    if not report.success:
        raise DataValidationError(
            f"the latest data for {dataset} failed its suite; fix it and run "
            f"`aipaas data run {dataset}`",
            report=report,
        )
    return DatasetVersion(
        name=dataset,
        hash=dataset_hash(outs[rel["train"]], outs[rel["holdout"]]),
        rows=_count_rows(p.train) + _count_rows(p.holdout),
        suite_passed=report.success,
        train_path=p.train,
        holdout_path=p.holdout,
        target=ds.target,
        git_commit=versioning.git_commit(repo),
    )


def _count_rows(path: Path) -> int:
    # Parsed, not line-counted: a quoted text field may hold newlines.
    return len(pd.read_csv(path, usecols=[0]))


def run_data_pipeline(dataset: str, settings: Settings, push: bool = True) -> DatasetVersion:
    """Reproduce the dataset's stages with DVC, push them, and return the version.

    What ``aipaas data run`` calls; the Prefect flow calls the same three
    steps as separate tasks so that only the push is retried.

    Raises:
        DataValidationError: the suite failed; nothing is split, locked or pushed.
        VersioningError: DVC failed for another reason (its output is in the message).
    """
    reproduce(dataset, settings)
    if push:
        push_dataset(dataset, settings)
    return recorded_version(dataset, settings)


def reproduce(dataset: str, settings: Settings) -> None:
    """``dvc repro split@<dataset>``: rerun what changed, record it in dvc.lock.

    DVC decides what to rerun (changed source code, params, suite or incoming
    files). The stages run in the same Python environment as this process,
    with this process's settings.

    Raises:
        DataValidationError: the suite failed (carries the report); DVC stopped
            before split, so the failed data is neither split nor locked as good.
        VersioningError: DVC failed for another reason (its output is in the message).
    """
    spec(dataset, settings)
    p = paths(dataset, settings)
    repo = Path(settings.versioning.repo)
    # DVC refuses a missing dependency: these directories exist even when empty.
    p.incoming.mkdir(parents=True, exist_ok=True)
    sources_dir(settings).mkdir(parents=True, exist_ok=True)
    try:
        versioning.repro(repo, [f"split@{dataset}"], env=stage_environment(settings))
    except VersioningError as err:
        # Only a failure of the validate stage is a suite failure; an older
        # failed report must not be blamed for, say, a broken ingest.
        failed_stage = f"validate@{dataset}" in str(err)
        report = _report_if_failed(dataset, settings) if failed_stage else None
        if report is not None:
            raise DataValidationError(
                f"{dataset} failed its suite: "
                + (report.error or f"{len(report.failed)} expectations failed")
                + "; nothing was split or pushed",
                report=report,
            ) from err
        raise


def push_dataset(dataset: str, settings: Settings) -> None:
    """Send the dataset's stage outputs to the DVC remote (default: under home)."""
    repo = Path(settings.versioning.repo)
    versioning.configure_remote(repo, settings.versioning.remote_name, settings.dvc_remote_url)
    versioning.push(
        repo,
        [f"{stage}@{dataset}" for stage in STAGES],
        remote=settings.versioning.remote_name,
        env=stage_environment(settings),
    )


def _report_if_failed(dataset: str, settings: Settings) -> ValidationReport | None:
    try:
        report = read_report(dataset, settings)
    except DatasetNotFoundError:
        return None
    return None if report.success else report


def stage_environment(settings: Settings) -> dict[str, str]:
    """Environment for ``dvc repro``: its stages see this process's settings and Python."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env["AIPAAS_HOME"] = str(settings.home)
    env["AIPAAS_DATA__DIR"] = str(settings.data.dir)
    env["AIPAAS_DATA__EXPECTATIONS_DIR"] = str(settings.data.expectations_dir)
    env["AIPAAS_DATA__HOLDOUT_FRACTION"] = str(settings.data.holdout_fraction)
    env["AIPAAS_DATA__SEED"] = str(settings.data.seed)
    env["AIPAAS_VERSIONING__REPO"] = str(settings.versioning.repo)
    env["AIPAAS_DATASETS"] = json.dumps(
        {name: s.model_dump() for name, s in settings.datasets.items()}
    )
    params = Path(settings.versioning.repo) / "params.yaml"
    if params.is_file():
        env["AIPAAS_PARAMS"] = str(params)
    env.update(versioning.DVC_ENV)
    return env


def list_datasets(settings: Settings) -> list[dict[str, Any]]:
    """Every declared dataset with its recorded version, if any (for ``aipaas data list``)."""
    rows = []
    for name, ds in sorted(settings.datasets.items()):
        row: dict[str, Any] = {"name": name, "source": ds.source, "target": ds.target}
        try:
            v = recorded_version(name, settings)
            row.update(hash=v.hash, rows=v.rows, suite="passed")
        except DataValidationError:
            row.update(hash=None, rows=None, suite="FAILED")
        except DatasetNotFoundError:
            row.update(hash=None, rows=None, suite="not run")
        rows.append(row)
    return rows
