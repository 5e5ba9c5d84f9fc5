"""Signed promotion records: the proof serving asks of a version before it loads it.

Anyone who can reach MLflow can move the ``champion`` alias; nobody without the
platform's audit key can sign. :func:`sign` is called by promotion and
rollback after the gates decided; the :class:`Attestation` goes on the
version as the :data:`~aipaas.training.tags.ATTESTATION` tag (and into the
audit chain). Serving calls :func:`verify_current` on the version the alias points at and
refuses it unless the record is signed with the key, names that very model
and version, records a promotion (or a rollback to it), and is the one the
model's latest decision in the audit chain recorded: a valid but stale
record (the alias moved back by hand to an old, once-promoted version) is
refused too. A version addressed explicitly (a key's pin, a request's
``X-Model-Version``) needs only :func:`verify`: it was promoted at some time.

The signature is an HMAC-SHA256 under ``audit.hmac_key`` over the record's
canonical JSON: model, version, action, result, who decided and when, who
approved, and the SHA-256 of the full gate results (the gates themselves
are in the version's tags and the audit chain; the tag copy may be
truncated, the digest is not).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from aipaas.exceptions import AuditIntegrityError, UnsignedVersionError
from aipaas.schemas import GateResult
from aipaas.settings import Settings
from aipaas.training import promotion_log, tags

# The results under which a record lets a version serve.
SERVABLE = ("promoted", "rolled-back")


@dataclass(frozen=True)
class Attestation:
    """One signed decision about one version."""

    model: str
    version: str
    action: str  # "promote" | "rollback"
    result: str  # "promoted" | "rolled-back" (the version rolled back *to*)
    decided_by: str
    at: str
    gates_sha256: str
    approved_by: str | None = None
    signature: str = ""

    def payload(self) -> dict[str, Any]:
        """What the signature covers: every field but the signature."""
        out = asdict(self)
        out.pop("signature")
        return out

    def to_tag(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_tag(cls, text: str) -> Attestation:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def gates_digest(gates: Sequence[GateResult]) -> str:
    """SHA-256 of the gate results in a canonical form."""
    canonical = json.dumps([g.to_dict() for g in gates], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _key(settings: Settings) -> bytes:
    return b"aipaas-promotion:" + settings.audit.hmac_key.get_secret_value().encode()


def _mac(settings: Settings, att: Attestation) -> str:
    canonical = json.dumps(att.payload(), sort_keys=True, separators=(",", ":"))
    return hmac.new(_key(settings), canonical.encode(), hashlib.sha256).hexdigest()


def sign(
    settings: Settings,
    *,
    model: str,
    version: str,
    action: str,
    result: str,
    decided_by: str,
    at: str,
    gates: Sequence[GateResult] = (),
    approved_by: str | None = None,
) -> Attestation:
    """A signed record of one decision; store it with :func:`tag_for`."""
    unsigned = Attestation(
        model=model,
        version=str(version),
        action=action,
        result=result,
        decided_by=decided_by,
        at=at,
        gates_sha256=gates_digest(gates),
        approved_by=approved_by,
    )
    return Attestation(**{**asdict(unsigned), "signature": _mac(settings, unsigned)})


def signature_valid(settings: Settings, att: Attestation) -> bool:
    """Whether ``att`` was signed under this platform's audit key and not edited since."""
    return bool(att.signature) and hmac.compare_digest(att.signature, _mac(settings, att))


def tag_for(att: Attestation) -> dict[str, str]:
    """The version tag that carries ``att``."""
    return {tags.ATTESTATION: att.to_tag()}


def verify(
    settings: Settings, model: str, version: str, version_tags: Mapping[str, str]
) -> Attestation:
    """The version's valid attestation, or why it has none.

    Raises:
        UnsignedVersionError: no record, a record that does not parse, one
            for another model or version, a bad signature, or a record that
            does not let the version serve (e.g. a rejection).
    """
    where = f"{model} v{version}"
    text = version_tags.get(tags.ATTESTATION)
    if not text:
        raise UnsignedVersionError(
            f"{where} has no promotion record: it never went through `aipaas promote` "
            "(was the alias moved by hand in MLflow?)"
        )
    try:
        att = Attestation.from_tag(text)
    except (ValueError, TypeError) as err:
        raise UnsignedVersionError(f"{where}: its promotion record does not parse ({err})") from err
    if att.model != model or att.version != str(version):
        raise UnsignedVersionError(
            f"{where}: its promotion record is for {att.model} v{att.version} (copied?)"
        )
    if not hmac.compare_digest(att.signature, _mac(settings, att)):
        raise UnsignedVersionError(
            f"{where}: its promotion record's signature does not verify "
            "(edited, or signed with another audit key)"
        )
    if att.result not in SERVABLE:
        raise UnsignedVersionError(f"{where}: its promotion record says {att.result!r}")
    return att


def verify_current(
    settings: Settings, model: str, version: str, version_tags: Mapping[str, str]
) -> Attestation:
    """The valid attestation of the version that should be champion now, or why not.

    On top of :func:`verify`: the model's latest promotion or rollback in the
    audit chain must name this version, with this very record.

    Raises:
        UnsignedVersionError: as :func:`verify`; or the chain has no such
            decision, names another version (the alias was moved without
            one), or its latest decision was edited.
    """
    att = verify(settings, model, version, version_tags)
    where = f"{model} v{version}"
    try:
        latest = promotion_log.latest_servable(settings, model)
    except AuditIntegrityError as err:
        raise UnsignedVersionError(f"{where}: {err}") from err
    if latest is None:
        raise UnsignedVersionError(
            f"{where} has a promotion record but the audit trail has no promotion of {model} "
            "(was the trail reset?)"
        )
    if latest.version != att.version:
        raise UnsignedVersionError(
            f"{where} was promoted once, but the latest decision in the audit trail made "
            f"v{latest.version} champion ({latest.action} by {latest.decided_by} at "
            f"{latest.at}): the alias was moved without a promotion or rollback; "
            f"use `aipaas rollback {model}` or `aipaas promote {model} --version {version}`"
        )
    if latest.signature != att.signature:
        raise UnsignedVersionError(
            f"{where}: its promotion record is not the one the audit trail recorded last "
            "(an older record copied back?)"
        )
    return att
