from __future__ import annotations

import pytest

from aipaas import audit
from aipaas.inference import usage


def test_usage_groups_by_key_and_version_with_cost(settings):
    writer = audit.AuditWriter(settings, commit_window_ms=0)
    recs = [
        ("k1", "1", 200, 0.002),
        ("k1", "1", 200, 0.004),
        ("k1", "1", 422, None),
        ("k1", "2", 200, 0.001),
        ("k2", "2", 429, None),
    ]
    futures = [
        writer.submit(
            audit.AuditRecord(
                key_id=k,
                owner=f"owner-{k}",
                model="diagnosis",
                version=v,
                status=s,
                compute_s=c,
                cost=(c or 0) * 0.5,
            )
        )
        for k, v, s, c in recs
    ]
    [f.result(timeout=10) for f in futures]
    writer.close()
    audit.append_event(settings, "key.created", key_id="k1")  # admin events are not usage
    rows = {(r.key_id, r.version): r for r in usage.usage(settings)}
    assert set(rows) == {("k1", "1"), ("k1", "2"), ("k2", "2")}
    k1v1 = rows[("k1", "1")]
    assert (k1v1.requests, k1v1.errors, k1v1.owner) == (3, 1, "owner-k1")
    assert k1v1.compute_s == pytest.approx(0.006)
    assert k1v1.cost == pytest.approx(0.003)
    assert rows[("k2", "2")].errors == 1
    assert [r.key_id for r in usage.usage(settings, key_id="k2")] == ["k2"]
