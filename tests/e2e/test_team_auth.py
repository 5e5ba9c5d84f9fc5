"""The team setup closes the shared services to strangers, for real.

MLflow runs its basic-auth app and Prefect its API auth string, both started
as ``aipaas up`` starts them (:mod:`tests.support.servers`). A stranger is
refused by both (401); the platform's account passes; a data scientist added
with ``aipaas users add`` logs runs of their own but cannot move ``champion``
nor delete a version of the platform's model (403), which the platform can.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from aipaas.ops import up
from aipaas.settings import Settings
from aipaas.training import registry, tags
from tests.support.registry import MODEL, register_tiny, tiny_settings
from tests.support.servers import CLI, cli_env, prefect_and_mlflow, server_settings

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

PLATFORM_PASSWORD = "platform-password-1"  # noqa: S105 - a test's own server
AUTH_STRING = "aipaas:prefect-team-secret"
ALICE, ALICE_PASSWORD = "alice", "alice-password-1"


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("team") / "home"
    s = server_settings(
        home,
        mlflow={"auth_enabled": True, "password": PLATFORM_PASSWORD},
        prefect={"auth_string": AUTH_STRING},
    )
    with prefect_and_mlflow(s):
        yield s


@pytest.fixture
def as_user(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Switch the MLflow login of this process; the variables are restored afterwards."""

    def login(username: str, password: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", username)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "")
    yield login


def _status(url: str, *, body: object = None, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _basic(user: str, password: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_strangers_are_refused_by_mlflow_and_prefect(team: Settings) -> None:
    search = f"{team.mlflow_tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(search) == 401
    assert _status(search, headers=_basic("aipaas", "wrong-password-1")) == 401
    assert _status(search, headers=_basic("aipaas", PLATFORM_PASSWORD)) == 200

    flows = f"{team.prefect_api_url}/flows/filter"
    assert _status(flows, body={}) == 401
    assert _status(flows, body={}, headers=_basic("aipaas", "not-the-secret")) == 401
    assert _status(flows, body={}, headers=up.prefect_headers(team)) == 200
    # The probes `up` and load balancers use stay open.
    assert _status(f"{team.prefect_api_url}/health") == 200
    assert _status(f"{team.mlflow_tracking_uri}/health") == 200


def test_a_worker_without_the_auth_string_is_told_which_setting_to_set(
    team: Settings, tmp_path: Path
) -> None:
    env = cli_env(team, AIPAAS_PREFECT__AUTH_STRING="")
    env.pop("PREFECT_API_AUTH_STRING")
    proc = subprocess.run(
        [*CLI, "worker"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "refuses this worker; set AIPAAS_PREFECT__AUTH_STRING" in proc.stderr


def test_the_platform_registers_its_deployments_with_the_auth_string(team: Settings) -> None:
    from flows.deployments import register

    assert register(team) == [
        "data", "train", "promote", "lifecycle", "drift", "retrain", "batch", "canary",
    ]  # fmt: skip
    found = up.prefect_api(team, "/deployments/filter", {})
    assert sorted(d["name"] for d in found) == sorted(register(team))  # idempotent: still eight
    assert {d["work_pool_name"] for d in found} == {team.prefect.work_pool}


def test_a_data_scientist_logs_runs_but_cannot_move_champion(
    team: Settings, tmp_path: Path, as_user
) -> None:  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    # The platform (its own account, from settings) registers a version.
    as_user("aipaas", PLATFORM_PASSWORD)
    v1 = register_tiny(tiny_settings(team, tmp_path))

    env = cli_env(team)
    added = subprocess.run(
        [*CLI, "users", "add", ALICE, "--password-stdin"],
        input=ALICE_PASSWORD + "\n",
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert added.returncode == 0, added.stderr
    assert f"created MLflow user {ALICE!r}" in added.stdout
    listed = subprocess.run(
        [*CLI, "users", "list"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split("\n")[:2] == ["aipaas (admin)", ALICE]
    again = subprocess.run(
        [*CLI, "users", "add", ALICE, "--password-stdin"],
        input=ALICE_PASSWORD + "\n",
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode != 0 and "the name is taken" in again.stderr, again.stderr

    # Alice logs a run in an experiment of her own and reads the registry ...
    as_user(ALICE, ALICE_PASSWORD)
    client = MlflowClient(team.mlflow_tracking_uri)
    experiment = client.create_experiment("alice-sandbox")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "roc_auc", 0.91)
    client.set_terminated(run.info.run_id)
    assert client.get_run(run.info.run_id).data.metrics == {"roc_auc": 0.91}
    assert client.get_model_version(MODEL, v1).version == v1
    # ... but cannot move the platform's champion nor delete its versions.
    with pytest.raises(MlflowException) as refused:
        client.set_registered_model_alias(MODEL, tags.CHAMPION, v1)
    assert refused.value.get_http_status_code() == 403
    with pytest.raises(MlflowException) as refused:
        client.delete_model_version(MODEL, v1)
    assert refused.value.get_http_status_code() == 403

    # The platform's account can.
    as_user("aipaas", PLATFORM_PASSWORD)
    registry.connect(team)
    registry.set_alias(MODEL, tags.CHAMPION, v1)
    champion = registry.get_alias(MODEL, tags.CHAMPION)
    assert champion is not None and champion.version == v1

    removed = subprocess.run(
        [*CLI, "users", "remove", ALICE],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert removed.returncode == 0, removed.stderr
    as_user(ALICE, ALICE_PASSWORD)
    with pytest.raises(MlflowException) as gone:
        MlflowClient(team.mlflow_tracking_uri).get_run(run.info.run_id)
    assert gone.value.get_http_status_code() == 401
