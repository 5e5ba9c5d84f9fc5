"""DVC adapter: reproduce stages, push outputs, read what dvc.lock records.

The only module that runs DVC. It runs DVC as a subprocess of this Python
(``python -m dvc``) rather than through DVC's Python API: every call gets its
own environment (the settings the stages must see) without touching this
process's ``os.environ``, and DVC's repository lock, logging and caches stay
out of long-lived processes such as the Prefect runner. ``dvc.lock`` and
``params.yaml`` are read directly: they are documented YAML files.

Objects are put in and taken out of the remote by content hash
(:func:`store`, :func:`pulled`), not only through the stages of dvc.yaml:
a dataset version a model names is a set of md5s (its dvc.lock entries), and
a fresh clone whose dvc.lock records another version must still be able to
fetch it. Both work through a throwaway ``.dvc`` file in a temporary
directory inside the repository, so DVC itself does the transfer, for a
local remote and for S3 alike.

Analytics and update checks are off for every call (no network at run time).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from aipaas.exceptions import ConfigurationError, RemoteError, VersioningError
from aipaas.files import atomic_write

DVC_ENV = {"DVC_NO_ANALYTICS": "1", "DVC_NO_UPDATER": "1"}
# DVC locks the repository; serialise this process's calls instead of failing on it.
_REPO_LOCK = threading.Lock()
_TAIL = 25  # lines of DVC output kept in an error message

# Words in DVC's output that mean "try again later", not "this is wrong".
_TRANSIENT = (
    "unable to acquire lock",
    "timed out",
    "timeout",
    "connection",
    "temporarily unavailable",
    "resource busy",
    "too many requests",
)


def _run(
    args: list[str], repo: Path, env: dict[str, str] | None = None, timeout: float = 1800
) -> str:
    """Run ``dvc <args>`` in ``repo`` and return its standard output, or raise with its tail."""
    repo = Path(repo)
    if not repo.is_dir():
        raise VersioningError(f"DVC repository {repo} does not exist")
    full_env = dict(env if env is not None else os.environ)
    full_env.update(DVC_ENV)
    cmd = [sys.executable, "-m", "dvc", *args]
    with _REPO_LOCK:
        try:
            proc = subprocess.run(  # noqa: S603 - fixed program, arguments from code
                cmd,
                cwd=repo,
                env=full_env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise RemoteError(f"`dvc {' '.join(args)}` timed out after {timeout:.0f} s") from err
    if proc.returncode != 0:
        output = (proc.stdout or "") + (proc.stderr or "")
        tail = "\n".join(output.strip().splitlines()[-_TAIL:])
        message = f"`dvc {' '.join(args)}` failed in {repo} (exit {proc.returncode}):\n{tail}"
        if args and args[0] == "push" and is_transient(output):
            raise RemoteError(message)
        raise VersioningError(message)
    return proc.stdout or ""


def is_transient(output: str) -> bool:
    """Whether DVC's output says "try again later" (a lock, a timeout, the network)."""
    low = output.lower()
    return any(word in low for word in _TRANSIENT)


def is_repo(repo: Path) -> bool:
    return (Path(repo) / ".dvc").is_dir()


def init(repo: Path) -> None:
    """``dvc init`` in a git repository, with analytics and update checks off."""
    if not is_repo(repo):
        _run(["init", "--quiet"], repo)
    _run(["config", "core.analytics", "false"], repo)
    _run(["config", "core.check_update", "false"], repo)


def configure_remote(repo: Path, name: str, url: str) -> None:
    """Make ``url`` the default remote, in ``.dvc/config.local`` (not committed).

    Home is a setting, so the default remote (a directory under home) is set
    at run time; a team that uses S3 or GCS sets ``versioning.remote_url``.
    Only the URL is set: options a team added with ``dvc remote modify --local``
    (an S3 ``endpointurl``, a ``profile``, credentials) are kept.
    """
    if "://" not in url:
        Path(url).mkdir(parents=True, exist_ok=True)
    if remote_configured(repo, name, url):
        return  # each `dvc remote` call is a process start: about 1.8 s here
    try:
        _run(["remote", "modify", "--local", name, "url", url], repo)
    except VersioningError:  # no such remote yet
        _run(["remote", "add", "--local", "--force", name, url], repo)
    _run(["remote", "default", "--local", name], repo)


def remote_configured(repo: Path, name: str, url: str) -> bool:
    """Whether ``.dvc/config.local`` already makes ``name`` at ``url`` the default remote.

    Read with configobj, the parser DVC itself writes the file with; anything
    unreadable counts as not configured (DVC then rewrites it).
    """
    import configobj

    local = Path(repo) / ".dvc" / "config.local"
    if not local.is_file():
        return False
    try:
        conf = configobj.ConfigObj(str(local))
    except configobj.ConfigObjError:
        return False
    remote = conf.get(f'remote "{name}"') or {}
    core = conf.get("core") or {}
    return bool(remote.get("url") == url and core.get("remote") == name)


def repro(repo: Path, targets: list[str], env: dict[str, str] | None = None) -> str:
    """``dvc repro <targets>``: rerun what changed upstream of the targets, lock it.

    Raises:
        VersioningError: a stage failed; the message ends with DVC's output.
    """
    return _run(["repro", *targets], repo, env=env)


def push(
    repo: Path, targets: list[str], remote: str | None = None, env: dict[str, str] | None = None
) -> str:
    """``dvc push`` the targets' outputs.

    Raises:
        RemoteError: the remote is unreachable or refused (transient: retry).
        VersioningError: anything else (e.g. outputs missing from the cache).
    """
    args = ["push", *targets]
    if remote:
        args += ["--remote", remote]
    return _run(args, repo, env=env)


def status(repo: Path, targets: list[str]) -> dict[str, Any]:
    """``dvc status --json``: what changed for each stage that would rerun (empty: none).

    A stage maps to what changed, e.g. ``[{"changed deps": {"params.yaml":
    {"data.seed": "modified"}}}]``.
    """
    output = _run(["status", "--json", *targets], repo)
    try:
        data = json.loads(output or "{}")
    except json.JSONDecodeError as err:
        raise VersioningError(f"`dvc status` printed no JSON: {output[:200]!r}") from err
    return data if isinstance(data, dict) else {}


def checkout(repo: Path, targets: list[str]) -> str:
    """``dvc checkout``: put back the outputs dvc.lock records, from the local cache."""
    return _run(["checkout", *targets], repo)


def pull(repo: Path, targets: list[str], remote: str | None = None) -> str:
    args = ["pull", *targets]
    if remote:
        args += ["--remote", remote]
    return _run(args, repo)


@contextmanager
def _scratch(repo: Path) -> Iterator[Path]:
    """A temporary directory inside ``repo``: DVC only reads ``.dvc`` files within its repository.

    Not under ``.aipaas/`` or another git-ignored place: DVC refuses a
    git-ignored ``.dvc`` file.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".aipaas-dvc-", dir=repo))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def store(
    repo: Path, path: Path, remote: str | None = None, env: dict[str, str] | None = None
) -> str:
    """Put a copy of a file or directory in the cache and the remote; return its DVC md5.

    The copy is hashed as DVC hashes a dependency (``.dvcignore`` applies),
    so a directory's md5 equals the one dvc.lock records for it as a stage's
    dep, and :func:`pulled` gets it back by that md5.

    Raises:
        RemoteError: the remote did not take the push (worth a retry).
        VersioningError: anything else.
    """
    with _scratch(repo) as tmp:
        copy = tmp / "object"
        if Path(path).is_dir():
            shutil.copytree(path, copy)
        else:
            shutil.copy2(path, copy)
        _run(["add", "--quiet", str(copy)], repo, env=env)
        doc = yaml.safe_load((tmp / "object.dvc").read_text()) or {}
        md5 = str(doc["outs"][0]["md5"])
        args = ["push", str(tmp / "object.dvc")]
        if remote:
            args += ["--remote", remote]
        _run(args, repo, env=env)
    return md5


@contextmanager
def pulled(
    repo: Path,
    objects: Mapping[str, str],
    remote: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[dict[str, Path]]:
    """Fetch objects by md5 (from the cache, else the remote) into a temporary directory.

    Args:
        repo: The DVC repository whose cache and remote are used.
        objects: A name of the caller's choosing -> DVC md5 (``<md5>.dir`` for
            a directory).
        remote: The remote to pull from (default: the repository's default).
        env: Environment for DVC.

    Yields:
        Each name -> where its copy is, valid inside the ``with`` block.

    Raises:
        VersioningError: an object is in neither the cache nor the remote
            (DVC's output is in the message).
    """
    with _scratch(repo) as tmp:
        names = {name: f"object{i}" for i, name in enumerate(objects)}
        outs = [{"md5": objects[name], "hash": "md5", "path": names[name]} for name in objects]
        (tmp / "objects.dvc").write_text(yaml.safe_dump({"outs": outs}, sort_keys=False))
        args = ["pull", str(tmp / "objects.dvc")]
        if remote:
            args += ["--remote", remote]
        _run(args, repo, env=env)
        yield {name: tmp / names[name] for name in objects}


def write_lock_entries(repo: Path, entries: Mapping[str, Any]) -> None:
    """Replace (or add) stage entries in dvc.lock, leaving every other stage as it was."""
    lock = read_lock(repo) or {"schema": "2.0"}
    stages = dict(lock.get("stages") or {})
    stages.update(entries)
    lock["stages"] = stages
    atomic_write(Path(repo) / "dvc.lock", yaml.safe_dump(lock, sort_keys=False))


def read_lock(repo: Path) -> dict[str, Any]:
    """dvc.lock as a dict (empty when no stage was ever run)."""
    lock = Path(repo) / "dvc.lock"
    if not lock.is_file():
        return {}
    try:
        data = yaml.safe_load(lock.read_text()) or {}
    except yaml.YAMLError as err:
        raise VersioningError(f"{lock} is not valid YAML: {err}") from err
    return data if isinstance(data, dict) else {}


def params_file(repo: Path) -> Path:
    """The params file DVC tracks for the stages in ``repo/dvc.yaml``."""
    return Path(repo) / "params.yaml"


def read_params(path: Path) -> dict[str, Any]:
    """A params file as a dict.

    Raises:
        ConfigurationError: the file is missing or is not a YAML mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(
            f"no params file at {path}: the data stages read their params from the "
            "params.yaml beside dvc.yaml (check versioning.repo)"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigurationError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path} is not a YAML mapping of settings")
    return data


def lock_entry(repo: Path, stage: str) -> dict[str, Any] | None:
    """One stage's entry in dvc.lock (cmd, deps, params, outs), or None."""
    entry = (read_lock(repo).get("stages") or {}).get(stage)
    return entry if isinstance(entry, dict) else None


def locked_outs(repo: Path, stage: str) -> dict[str, str]:
    """``{path: md5}`` of a stage's outputs as dvc.lock records them (POSIX paths)."""
    entry = (read_lock(repo).get("stages") or {}).get(stage) or {}
    return {
        str(out["path"]): str(out["md5"])
        for out in entry.get("outs") or []
        if "path" in out and "md5" in out
    }


def relpath(repo: Path, path: Path) -> str:
    """``path`` as dvc.lock writes it: relative to the repository, POSIX separators."""
    try:
        return Path(path).resolve().relative_to(Path(repo).resolve()).as_posix()
    except ValueError as err:
        raise VersioningError(
            f"{path} is outside the DVC repository {repo}; set data.dir inside it"
        ) from err


def file_md5(path: Path) -> str:
    """The md5 DVC 3 records for a file: of its bytes."""
    digest = hashlib.md5()  # noqa: S324 - DVC's content hash, not security
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_commit(repo: Path) -> str | None:
    """The repository's HEAD commit, or None outside git (or before the first commit)."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"],  # noqa: S607
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = proc.stdout.strip()
    return out if proc.returncode == 0 and out else None
