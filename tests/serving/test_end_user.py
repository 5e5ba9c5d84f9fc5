"""``X-End-User``: the record keeps a keyed pseudonym, never the id; a bad value is a 422."""

from __future__ import annotations

import pytest

from aipaas import audit
from serving.middleware import end_user_id
from tests.support.serving import ROW, bearer


def _stored(settings) -> bytes:
    return b"".join(p.read_bytes() for p in settings.home.glob("platform.db*"))  # and the WAL


def test_the_record_names_the_end_user_by_pseudonym_only(client, settings, predict_key):
    h = bearer(predict_key)
    r = client.post("/predict", json=ROW, headers={**h, "X-End-User": "patient-4711"})
    assert r.status_code == 200
    client.post("/predict", json=ROW, headers=h)  # no end user
    first, second = audit.query(settings, newest_first=False)[-2:]
    pseudonym = audit.end_user_pseudonym(settings, "patient-4711")
    assert first["end_user"] == pseudonym and len(pseudonym) == 32
    assert second["end_user"] is None
    assert b"patient-4711" not in _stored(settings)
    assert [x["request_id"] for x in audit.query(settings, end_user="patient-4711")] == [
        r.json()["request_id"]
    ]
    assert audit.verify(settings).ok


@pytest.mark.parametrize(
    "value",
    ["x" * 129, "a\tb", "a\x01b", ""],
    ids=["too-long", "tab", "control", "empty"],
)
def test_a_bad_end_user_is_a_422_audited_without_it(client, settings, predict_key, value):
    r = client.post("/predict", json=ROW, headers={**bearer(predict_key), "X-End-User": value})
    assert r.status_code == 422
    assert r.json() == {
        "detail": "X-End-User must be 1 to 128 bytes of UTF-8 text without control characters"
    }
    (rec,) = [x for x in audit.query(settings) if x["kind"] == "request"]
    assert (rec["status"], rec["end_user"], rec["key_id"]) == (422, None, None)


def test_what_an_end_user_id_may_be():
    assert end_user_id("élodie".encode()) == "élodie"
    assert end_user_id(b"x" * 128) == "x" * 128
    # Not UTF-8 (the test client re-encodes such headers, so this is checked here)
    for bad in [b"\xff\xfe", b"x" * 129, b"a\x7fb", b"a\nb", b""]:
        assert end_user_id(bad) is None, bad


def test_an_end_user_of_128_bytes_of_utf8_is_accepted(client, settings, predict_key):
    name = "é" * 64  # 128 bytes
    r = client.post(
        "/predict", json=ROW, headers={**bearer(predict_key), "X-End-User": name.encode()}
    )
    assert r.status_code == 200
    assert audit.query(settings, end_user=name)[0]["request_id"] == r.json()["request_id"]


def test_usage_and_the_trail_per_end_user_over_http(client, settings, predict_key, admin_key):
    h = bearer(predict_key)
    for user in ["ana", "ana", "ben"]:
        client.post("/predict", json=ROW, headers={**h, "X-End-User": user})
    admin = bearer(admin_key)
    rows = client.get("/usage", params={"by_end_user": "true"}, headers=admin).json()
    by_user = {r["end_user"]: r["requests"] for r in rows if r["version"] == "1"}
    ana, ben = (audit.end_user_pseudonym(settings, u) for u in ("ana", "ben"))
    assert by_user == {ana: 2, ben: 1}
    only_ana = client.get("/usage", params={"end_user": "ana"}, headers=admin).json()
    assert [(r["key_id"], r["requests"]) for r in only_ana] == [(predict_key.split("_")[1], 2)]
    records = client.get("/audit", params={"end_user": "ben"}, headers=admin).json()
    assert [(r["end_user"], r["route"]) for r in records] == [(ben, "/predict")]
