"""The console's drift report page on a host that did not run the check: served from MLflow.

Host A runs a real drift check (spool, profiler, check, store) against a
real MLflow server; the console of host B (its own home, the same platform
database and MLflow) lists it and serves its report, which exists on no
disk of B. With MLflow unreachable, B says so on a page, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aipaas.inference import keys
from aipaas.monitoring.drift_report import drift_history
from aipaas.settings import Settings
from tests.monitoring.mlflow_server import host, mlflow_server
from tests.serving.test_console import login
from tests.support.console import write_drift_check
from tests.support.net import free_port


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


def test_a_console_on_another_host_serves_the_report_from_mlflow(
    make_client, tracking_server: Settings, tmp_path: Path
) -> None:
    shared = f"sqlite:///{tmp_path / 'platform.db'}"
    a = host(tmp_path / "a", tracking_server, shared)
    b = host(tmp_path / "b", tracking_server, shared)
    name = write_drift_check(a)
    (record,) = drift_history(b, "diagnosis")
    assert record.mlflow_run is not None and record.store_error is None
    assert not (b.reports_dir / "drift" / "diagnosis" / name).exists()

    key = keys.create_key(b, "ops", "admin")[1]
    console = make_client(b, key_cache_s=0.0)
    login(console, key)
    page = console.get("/console/drift")
    assert f'href="/console/drift/diagnosis/{name}"' in page.text
    report = console.get(f"/console/drift/diagnosis/{name}")
    assert report.status_code == 200, report.text
    assert "Decision: retrain" in report.text and "alt='mean_radius'" in report.text
    assert report.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in report.headers["content-security-policy"]
    assert report.headers["cache-control"] == "no-store"
    # A name no check stored is still a 404, on this host as on the other.
    assert console.get("/console/drift/diagnosis/v1-20200101T000000.html").status_code == 404

    # Host A deletes its copy: its own console now serves MLflow's.
    Path(record.html or "").unlink()
    own = make_client(a, key_cache_s=0.0)
    login(own, keys.create_key(a, "ops-a", "admin")[1])
    again = own.get(f"/console/drift/diagnosis/{name}")
    assert again.status_code == 200 and again.text == report.text


def test_with_mlflow_unreachable_the_page_says_so(
    make_client, tracking_server: Settings, tmp_path: Path
) -> None:
    shared = f"sqlite:///{tmp_path / 'platform.db'}"
    name = write_drift_check(host(tmp_path / "a", tracking_server, shared))
    dead = host(tmp_path / "b", tracking_server, shared,
                mlflow={"port": free_port(), "http_max_retries": 0})  # fmt: skip
    console = make_client(dead, key_cache_s=0.0)
    login(console, keys.create_key(dead, "ops", "admin")[1])
    r = console.get(f"/console/drift/diagnosis/{name}")
    assert r.status_code == 503
    assert "was written on another host, and MLflow could not return it now" in r.text
    assert "did not answer" in r.text and "Traceback" not in r.text
