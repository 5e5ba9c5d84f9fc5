"""Signed promotion records: what serving accepts, and every way a record is refused.

Plain values and the real audit chain (a SQLite file per test); no MLflow:
a version's tags are a dict here, as the registry adapter returns them.
"""

from __future__ import annotations

import json
import re

import pytest
from pydantic import SecretStr
from sqlalchemy import update

from aipaas import db
from aipaas.exceptions import UnsignedVersionError
from aipaas.schemas import GateResult
from aipaas.settings import Settings
from aipaas.training import attestation, promotion_log, tags
from aipaas.training.attestation import Attestation
from aipaas.training.promotion_log import PromotionRecord

GATES = [GateResult("min roc_auc", True, 0.93, ">= 0.7")]


def _signed(
    settings: Settings, version: str, *, action: str = "promote", result: str = "promoted"
) -> Attestation:
    return attestation.sign(
        settings,
        model="m",
        version=version,
        action=action,
        result=result,
        decided_by="alice (cli)",
        at="2026-01-01T00:00:00+00:00",
        gates=GATES,
    )


def _on_chain(settings: Settings, att: Attestation) -> None:
    """What a promotion appends: the decision, with the record's signature."""
    result = "rolled-back" if att.action == "rollback" else "promoted"
    promotion_log.append(
        settings,
        PromotionRecord(
            "m",
            att.version,
            att.action,
            result,
            att.decided_by,  # type: ignore[arg-type]
            signature=att.signature,
        ),  # fmt: skip
    )


def test_a_signed_record_verifies_and_names_what_was_decided(settings: Settings) -> None:
    att = _signed(settings, "3")
    got = attestation.verify(settings, "m", "3", attestation.tag_for(att))
    assert got == att
    assert got.gates_sha256 == attestation.gates_digest(GATES)
    assert json.loads(attestation.tag_for(att)[tags.ATTESTATION])["decided_by"] == "alice (cli)"


def _edited(att: Attestation, **change: str) -> dict[str, str]:
    data = json.loads(att.to_tag()) | change
    return {tags.ATTESTATION: json.dumps(data)}


@pytest.mark.parametrize(
    ("version_tags", "why"),
    [
        ({}, "has no promotion record"),
        ({tags.ATTESTATION: "{not json"}, "does not parse"),
        ("edited", "signature does not verify"),
        ("copied", "is for m v1 (copied?)"),
        ("rejected", "says 'rejected'"),
        ("other key", "signature does not verify"),
    ],
)
def test_every_forged_or_missing_record_is_refused(
    settings: Settings, version_tags: object, why: str
) -> None:
    if version_tags == "edited":  # someone with MLflow access changes who decided
        version_tags = _edited(_signed(settings, "3"), decided_by="mallory")
    elif version_tags == "copied":  # a valid record of v1 put on v3
        version_tags = attestation.tag_for(_signed(settings, "1"))
    elif version_tags == "rejected":
        version_tags = attestation.tag_for(_signed(settings, "3", result="rejected"))
    elif version_tags == "other key":
        audit = settings.audit.model_copy(update={"hmac_key": SecretStr("another-key")})
        other = settings.model_copy(update={"audit": audit})
        version_tags = attestation.tag_for(_signed(other, "3"))
    assert isinstance(version_tags, dict)
    with pytest.raises(UnsignedVersionError, match=re.escape(why)):
        attestation.verify(settings, "m", "3", version_tags)


def test_only_the_latest_decision_on_the_chain_may_be_champion(settings: Settings) -> None:
    v1, v2 = _signed(settings, "1"), _signed(settings, "2")
    with pytest.raises(UnsignedVersionError, match="audit trail has no promotion of m"):
        attestation.verify_current(settings, "m", "1", attestation.tag_for(v1))
    _on_chain(settings, v1)
    assert attestation.verify_current(settings, "m", "1", attestation.tag_for(v1)) == v1
    _on_chain(settings, v2)

    # v1 is still validly signed (a key may pin it) but no longer champion on record.
    assert attestation.verify(settings, "m", "1", attestation.tag_for(v1)) == v1
    with pytest.raises(UnsignedVersionError, match="latest decision in the audit trail made v2"):
        attestation.verify_current(settings, "m", "1", attestation.tag_for(v1))
    assert attestation.verify_current(settings, "m", "2", attestation.tag_for(v2)) == v2

    # A rollback to v1 makes it champion again, under the rollback's own record;
    # v1's old promotion record copied back is not that record.
    back = _signed(settings, "1", action="rollback", result="rolled-back")
    _on_chain(settings, back)
    assert attestation.verify_current(settings, "m", "1", attestation.tag_for(back)) == back
    with pytest.raises(UnsignedVersionError, match="not the one the audit trail recorded last"):
        attestation.verify_current(settings, "m", "1", attestation.tag_for(v1))


def test_an_edited_decision_on_the_chain_is_not_believed(settings: Settings) -> None:
    v1, v2 = _signed(settings, "1"), _signed(settings, "2")
    _on_chain(settings, v1)
    _on_chain(settings, v2)
    # Someone with write access to the database makes v1 the latest decision again.
    t = db.audit_log
    with db.engine(settings).begin() as conn:
        conn.execute(
            update(t)
            .where(t.c.event == "model.promoted", t.c.version == "2")
            .values(version="1", detail=json.dumps({"signature": v1.signature}))
        )
    with pytest.raises(UnsignedVersionError, match="was edited"):
        attestation.verify_current(settings, "m", "1", attestation.tag_for(v1))
