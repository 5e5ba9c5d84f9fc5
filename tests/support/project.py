"""A throwaway git + DVC project for the data-layer tests.

It holds what a fresh clone of aipaas holds for the data DAG (dvc.yaml,
params.yaml, the code every stage lists as a dependency, the suite, the empty
incoming directory) and nothing else. The template is built and reproduced
once per test session (about 25 s: three stages, each a real ``aipaas``
process); each test gets its own copy, so tests never see each other's changes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import yaml

from aipaas.datasets import ingest, versioning
from aipaas.settings import PROJECT_ROOT, Settings

_template: Path | None = None


def stage_code() -> list[str]:
    """The source files dvc.yaml's stages depend on (DVC refuses a missing dependency)."""
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    deps = {dep for stage in stages.values() for dep in stage["do"]["deps"]}
    return sorted(d for d in deps if d.startswith("aipaas/"))


def files() -> list[str]:
    """What a fresh clone holds for the data DAG."""
    return [
        "dvc.yaml",
        "params.yaml",
        ".dvcignore",
        "expectations/breast_cancer.json",
        "expectations/quotes.json",
        *stage_code(),
    ]


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=60
    )
    return proc.stdout.strip()


def new_project(root: Path) -> Path:
    """A git + DVC repository with the data DAG, committed, nothing reproduced."""
    repo = root / "repo"
    for rel in files():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / rel, repo / rel)
    (repo / "data/incoming/breast_cancer").mkdir(parents=True)
    (repo / "data/incoming/breast_cancer/.gitkeep").touch()
    (repo / "data/sources").mkdir()
    (repo / "data/sources/.gitkeep").touch()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "aipaas tests")
    git(repo, "config", "user.email", "tests@aipaas.invalid")
    git(repo, "config", "commit.gpgsign", "false")
    versioning.init(repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "data DAG")
    return repo


def project_settings(repo: Path, home: Path) -> Settings:
    """Settings whose data, suites and DVC repository are the project at ``repo``."""
    return Settings(
        _env_file=None,
        home=home,
        data={"dir": repo / "data", "expectations_dir": repo / "expectations"},
        versioning={"repo": repo},
    )


def project_env(repo: Path, home: Path) -> dict[str, str]:
    """The environment that points ``get_settings()`` (the CLI, the flows) at ``repo``."""
    return {
        "AIPAAS_HOME": str(home),
        "AIPAAS_DATA__DIR": str(repo / "data"),
        "AIPAAS_DATA__EXPECTATIONS_DIR": str(repo / "expectations"),
        "AIPAAS_VERSIONING__REPO": str(repo),
        "AIPAAS_PARAMS": str(repo / "params.yaml"),
    }


def template(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """The session's reproduced project (built on first use)."""
    global _template
    if _template is None:
        root = tmp_path_factory.mktemp("dvc-template")
        repo = new_project(root)
        home = root / "home"
        home.mkdir()
        ingest.run_data_pipeline("breast_cancer", project_settings(repo, home), push=False)
        _template = repo
    return _template


def copy_project(tmp_path_factory, dest: Path) -> Path:  # type: ignore[no-untyped-def]
    """A private copy of the reproduced template: git history, dvc.lock, cache, outputs."""
    repo = dest / "repo"
    shutil.copytree(template(tmp_path_factory), repo, symlinks=True)
    return repo


def bad_rows(repo: Path, n: int = 3) -> pd.DataFrame:
    """Labelled rows with an unknown diagnosis: they must fail the suite."""
    rows = pd.read_csv(repo / "data/breast_cancer/raw.csv").head(n).copy()
    rows["diagnosis"] = "unsure"
    return rows
