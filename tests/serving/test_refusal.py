"""Only promoted versions serve: a real MLflow store, aliases moved behind the platform's back.

MLflow's own client moves ``champion`` here as anyone with registry access
could: to a version never promoted, to one with a forged or copied record,
back to an old once-promoted one. Serving refuses each, keeps the version it
had, says why (``holder.refused``, ``aipaas models show``) and audits the
refusal once. A promotion or rollback on record clears it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from mlflow import MlflowClient

from aipaas import audit
from aipaas.settings import Settings
from aipaas.training import attestation, promote, registry, tags
from serving.holder import ModelHolder, RegistrySource
from tests.support.models import log_lgbm, make_champion
from tests.support.serving import bearer

MODEL = "diagnosis"
ROW = {"mean_radius": 1.0, "mean_texture": 0.0, "mean_area": 1.0}


def _move_alias_by_hand(version: str) -> None:
    MlflowClient().set_registered_model_alias(MODEL, tags.CHAMPION, version)


def _refusals(settings: Settings) -> list[tuple[str, dict[str, Any]]]:
    rows = audit.tail(settings, 1000)
    return [(r["version"], json.loads(r["detail"])) for r in rows if r["event"] == "model.refused"]


class Events:
    """The holder's audit events, in memory."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, dict[str, Any]]] = []

    def __call__(self, event: str, model: str, version: str | None, detail: dict) -> None:
        self.seen.append((event, version, detail))


def _holder(settings: Settings) -> tuple[ModelHolder, Events]:
    events = Events()
    return ModelHolder(RegistrySource(settings), events, [MODEL]), events


def test_an_alias_moved_to_an_unsigned_version_is_refused_once_and_shown(
    settings: Settings,
    make_client: Callable[..., Any],
    predict_key: str,
    admin_key: str,
    use_settings: Callable[..., Settings],
) -> None:
    from typer.testing import CliRunner

    from aipaas.cli import app

    v1 = log_lgbm(settings)
    v2 = log_lgbm(settings, champion=False, seed=1)
    c = make_client(model_source=None)  # the real registry source
    h = bearer(predict_key)
    assert c.post("/predict", json=ROW, headers=h).json()["model_version"] == v1

    _move_alias_by_hand(v2)
    for _ in range(3):  # every poll refuses; the trail says so once
        r = c.post("/admin/reload", headers=bearer(admin_key))
        assert r.json()["outcomes"][MODEL] == "refused"
    assert c.post("/predict", json=ROW, headers=h).json()["model_version"] == v1
    reason = c.app.state.components.holder.refused[MODEL]
    assert f"{MODEL} v{v2} has no promotion record" in reason
    [(version, detail)] = _refusals(settings)
    assert version == v2 and detail == {"reason": reason, "serving": v1}

    use_settings(settings)
    shown = CliRunner().invoke(app, ["models", "show", MODEL])
    assert shown.exit_code == 0, shown.output
    assert f"serving REFUSES champion v{v2}: {reason}" in shown.stdout

    make_champion(settings, MODEL, v2)  # a promotion on record clears the refusal
    assert c.post("/admin/reload", headers=bearer(admin_key)).json()["outcomes"][MODEL] == "swapped"
    assert MODEL not in c.app.state.components.holder.refused
    assert c.post("/predict", json=ROW, headers=h).json()["model_version"] == v2
    assert audit.verify(settings).ok


def _forge(settings: Settings, v1: str, v2: str, how: str) -> dict[str, str]:
    if how == "edited":  # a record for v2, with who decided changed after signing
        att = attestation.sign(
            settings,
            model=MODEL,
            version=v2,
            action="promote",
            result="promoted",
            decided_by="alice (cli)",
            at="2026-01-01",
        )
        data = json.loads(att.to_tag()) | {"decided_by": "mallory"}
        return {tags.ATTESTATION: json.dumps(data)}
    return {tags.ATTESTATION: registry.get_version(MODEL, v1).tags[tags.ATTESTATION]}  # copied


@pytest.mark.parametrize(
    ("how", "why"),
    [("edited", "signature does not verify"), ("copied", f"record is for {MODEL} v1 (copied?)")],
)
def test_a_tampered_promotion_record_is_refused(settings: Settings, how: str, why: str) -> None:
    v1 = log_lgbm(settings)
    v2 = log_lgbm(settings, champion=False, seed=1)
    holder, events = _holder(settings)
    assert holder.refresh(MODEL) == "loaded"
    registry.set_tags(MODEL, v2, _forge(settings, v1, v2, how))
    _move_alias_by_hand(v2)
    assert holder.refresh(MODEL) == "refused"
    assert why in holder.refused[MODEL]
    assert holder.get(MODEL).version == v1  # type: ignore[union-attr]
    assert [e[:2] for e in events.seen] == [("model.loaded", v1), ("model.refused", v2)]


def test_an_alias_moved_back_to_an_old_champion_needs_a_rollback(settings: Settings) -> None:
    v1 = log_lgbm(settings)
    v2 = log_lgbm(settings, seed=1)  # promoted: v1 is previous-champion
    holder, events = _holder(settings)
    assert holder.refresh(MODEL) == "loaded"

    _move_alias_by_hand(v1)  # v1's record is valid, but not the latest decision
    assert holder.refresh(MODEL) == "refused"
    assert f"latest decision in the audit trail made v{v2} champion" in holder.refused[MODEL]
    assert holder.get(MODEL).version == v2  # type: ignore[union-attr]

    _move_alias_by_hand(v2)  # put back: nothing is refused any more
    assert holder.refresh(MODEL) == "unchanged" and MODEL not in holder.refused

    promote.rollback(settings, MODEL, decided_by="carol")  # the same move, on record
    assert holder.refresh(MODEL) == "swapped" and MODEL not in holder.refused
    assert holder.get(MODEL).version == v1  # type: ignore[union-attr]
    assert [e[:2] for e in events.seen] == [
        ("model.loaded", v2),
        ("model.refused", v1),
        ("model.swapped", v1),
    ]


def test_nothing_serves_when_the_only_champion_is_refused(
    settings: Settings, make_client: Callable[..., Any], predict_key: str
) -> None:
    v1 = log_lgbm(settings, champion=False)
    _move_alias_by_hand(v1)
    c = make_client(model_source=None)
    r = c.post("/predict", json=ROW, headers=bearer(predict_key))
    assert r.status_code == 503
    assert f"{MODEL} v{v1} has no promotion record" in r.json()["detail"]
    assert c.get("/readyz").status_code == 503
    assert [v for v, _ in _refusals(settings)] == [v1]


def test_a_rollback_through_the_api_is_signed_with_the_admin_key(
    settings: Settings, make_client: Callable[..., Any], predict_key: str
) -> None:
    from aipaas.inference import keys

    v1 = log_lgbm(settings)
    v2 = log_lgbm(settings, seed=1)
    ops, admin = keys.create_key(settings, "ops", "admin")
    c = make_client(model_source=None)
    url = f"/models/{MODEL}/rollback"
    assert c.post(f"/admin{url}", headers=bearer(predict_key)).status_code == 403

    r = c.post(f"/admin{url}", headers=bearer(admin))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["version"], body["previous"], body["serving"]) == (v1, v2, "swapped")
    assert body["decided_by"] == f"key {ops.id} (ops)"
    assert c.post("/predict", json=ROW, headers=bearer(predict_key)).json()["model_version"] == v1
    [event] = [r for r in audit.tail(settings, 100) if r["event"] == "model.rolled_back"]
    assert (event["key_id"], event["owner"], event["version"]) == (ops.id, body["decided_by"], v1)
    assert json.loads(event["detail"])["signature"] == body["signature"]

    again = c.post(f"/admin{url}", headers=bearer(admin))
    assert again.status_code == 404 and "no 'previous-champion'" in again.json()["detail"]
    assert audit.verify(settings).ok
