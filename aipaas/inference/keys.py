"""Per-client API keys: created from the CLI, stored hashed, scoped, revocable.

A key reads ``aip_<id>_<secret>``: the public ``id`` finds the row (and is
what the audit trail and usage name), the secret is only ever shown once.
The database keeps the SHA-256 of the whole key; the secret has 192 bits of
entropy, so a slow password hash would buy nothing and cost every request.
Comparison is constant-time.

Scopes: ``predict`` (every model) or ``predict:<model>``, ``feedback``
(or ``feedback:<model>``), and ``admin`` (usage, admin routes; implies all).

A refusal is an exception from :mod:`aipaas.exceptions`: who is calling is
not established (:class:`KeyRejectedError`), the key lacks the scope
(:class:`ScopeDeniedError`), or it is over its rate
(:class:`RateLimitedError`). Nothing here knows about HTTP; the serving tier
maps them to 401, 403 and 429.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from datetime import time as dtime
from functools import lru_cache

from sqlalchemy import select, update

from aipaas import audit, db
from aipaas.exceptions import (
    ConfigurationError,
    KeyRejectedError,
    RateLimitedError,
    ScopeDeniedError,
)
from aipaas.settings import Settings

PREFIX = "aip"
KNOWN_SCOPES = ("predict", "feedback", "admin")
_KEY_RE = re.compile(rf"^{PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_\-]{{20,}})$")
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: tuple[str, ...]
    rate: str | None
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    # model -> version this key's requests are answered by (instead of the champion)
    pins: dict[str, str] = field(default_factory=dict)
    quota: str | None = None  # "10000/day"
    budget: str | None = None  # "50/month"

    @property
    def active(self) -> bool:
        return self.revoked_at is None and not self.expired

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= _now_iso()

    def allows(self, scope: str, model: str | None = None) -> bool:
        """Whether this key may use ``scope`` (on ``model``, for model routes)."""
        if "admin" in self.scopes:
            return True
        if scope in self.scopes:
            return True
        return model is not None and f"{scope}:{model}" in self.scopes

    def require(self, scope: str, model: str | None = None) -> None:
        """Refuse unless :meth:`allows`.

        Raises:
            ScopeDeniedError: the key does not hold ``scope`` (for ``model``).
        """
        if not self.allows(scope, model):
            target = f" on model {model!r}" if model else ""
            raise ScopeDeniedError(f"API key {self.id} lacks scope {scope!r}{target}")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@lru_cache(maxsize=256)
def parse_rate(rate: str) -> tuple[float, float]:
    """``"50/s"`` -> (tokens per second, bucket capacity)."""
    m = _RATE_RE.match(rate)
    if not m:
        raise ConfigurationError(f"rate {rate!r} is not like '50/s', '600/m' or '1000/h'")
    count = float(m.group(1))
    if count <= 0:
        raise ConfigurationError(f"rate {rate!r} must be positive")
    per_s = count / _PER[m.group(2)]
    # A burst of one second's worth: "50/s" allows 50 at once, "5/m" one.
    return per_s, max(1.0, per_s)


def parse_scopes(scopes: str | list[str]) -> tuple[str, ...]:
    items = scopes.split(",") if isinstance(scopes, str) else scopes
    out = []
    for raw in items:
        scope = raw.strip()
        if not scope:
            continue
        if scope.split(":", 1)[0] not in KNOWN_SCOPES or scope == "admin:" or scope.endswith(":"):
            raise ConfigurationError(
                f"unknown scope {scope!r}: use predict, feedback, admin, or predict:<model>"
            )
        out.append(scope)
    if not out:
        raise ConfigurationError("a key needs at least one scope (e.g. --scopes predict,feedback)")
    return tuple(dict.fromkeys(out))


def parse_expiry(expires: str | None) -> str | None:
    """A date (end of that day, UTC) or an ISO datetime -> ISO UTC string."""
    if not expires:
        return None
    try:
        if len(expires) == 10:
            when = datetime.combine(date.fromisoformat(expires), dtime.max, tzinfo=UTC)
        else:
            when = datetime.fromisoformat(expires)
            when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except ValueError as err:
        raise ConfigurationError(f"--expires {expires!r} is not a date like 2026-12-31") from err
    return when.isoformat(timespec="microseconds")


def _row(r: object) -> ApiKey:
    return ApiKey(
        id=r.id,  # type: ignore[attr-defined]
        name=r.name,  # type: ignore[attr-defined]
        scopes=tuple(s for s in r.scopes.split(",") if s),  # type: ignore[attr-defined]
        rate=r.rate,  # type: ignore[attr-defined]
        created_at=r.created_at,  # type: ignore[attr-defined]
        expires_at=r.expires_at,  # type: ignore[attr-defined]
        revoked_at=r.revoked_at,  # type: ignore[attr-defined]
        pins=json.loads(r.pins) if r.pins else {},  # type: ignore[attr-defined]
        quota=r.quota,  # type: ignore[attr-defined]
        budget=r.budget,  # type: ignore[attr-defined]
    )


def create_key(
    settings: Settings,
    name: str,
    scopes: str | list[str],
    *,
    rate: str | None = None,
    expires: str | None = None,
) -> tuple[ApiKey, str]:
    """Create a key (audited); returns its record and the plaintext key, never stored."""
    if not name.strip():
        raise ConfigurationError("a key needs a --name naming its client")
    scope_t = parse_scopes(scopes)
    if rate is not None:
        parse_rate(rate)
    key_id = secrets.token_hex(6)
    plaintext = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(24)}"
    record = ApiKey(
        id=key_id,
        name=name.strip(),
        scopes=scope_t,
        rate=rate,
        created_at=_now_iso(),
        expires_at=parse_expiry(expires),
        revoked_at=None,
    )
    with db.engine(settings).begin() as conn:
        conn.execute(
            db.api_keys.insert().values(
                id=record.id,
                name=record.name,
                key_hash=_hash(plaintext),
                scopes=",".join(record.scopes),
                rate=record.rate,
                created_at=record.created_at,
                expires_at=record.expires_at,
            )
        )
    audit.append_event(
        settings,
        "key.created",
        {
            "name": record.name,
            "scopes": list(record.scopes),
            "rate": record.rate,
            "expires_at": record.expires_at,
        },
        key_id=record.id,
        owner=record.name,
    )
    return record, plaintext


def list_keys(settings: Settings) -> list[ApiKey]:
    with db.engine(settings).connect() as conn:
        rows = conn.execute(select(db.api_keys).order_by(db.api_keys.c.created_at)).all()
    return [_row(r) for r in rows]


def get_key(settings: Settings, key_id: str) -> ApiKey | None:
    with db.engine(settings).connect() as conn:
        r = conn.execute(select(db.api_keys).where(db.api_keys.c.id == key_id)).first()
    return _row(r) if r is not None else None


def revoke_key(settings: Settings, key_id: str) -> ApiKey:
    """Revoke a key; serving refuses it within :data:`KeyStore` ``ttl_s``."""
    with db.engine(settings).begin() as conn:
        res = conn.execute(
            update(db.api_keys)
            .where(db.api_keys.c.id == key_id, db.api_keys.c.revoked_at.is_(None))
            .values(revoked_at=_now_iso())
        )
    key = get_key(settings, key_id)
    if key is None:
        known = ", ".join(k.id for k in list_keys(settings)) or "none"
        raise ConfigurationError(f"no key with id {key_id!r} (known: {known})")
    if res.rowcount == 0 and key.revoked_at is None:  # pragma: no cover - race
        raise ConfigurationError(f"key {key_id} could not be revoked")
    if res.rowcount:
        audit.append_event(
            settings, "key.revoked", {"name": key.name}, key_id=key.id, owner=key.name
        )
    return key


class KeyStore:
    """Authenticates bearer tokens for serving, with a short cache.

    The cache keeps the database off the request path; a revocation made by
    another process (the CLI) takes effect within ``ttl_s``.
    """

    def __init__(self, settings: Settings, ttl_s: float = 2.0) -> None:
        self._settings = settings
        self._ttl = ttl_s
        self._cache: dict[str, tuple[float, str, ApiKey] | tuple[float, None, None]] = {}
        self._lock = threading.Lock()

    def _lookup(self, key_id: str) -> tuple[str | None, ApiKey | None]:
        now = time.monotonic()
        hit = self._cache.get(key_id)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1], hit[2]
        with db.engine(self._settings).connect() as conn:
            r = conn.execute(select(db.api_keys).where(db.api_keys.c.id == key_id)).first()
        entry: tuple[float, str, ApiKey] | tuple[float, None, None]
        entry = (now, r.key_hash, _row(r)) if r is not None else (now, None, None)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key_id] = entry
        return entry[1], entry[2]

    @staticmethod
    def _parse(authorization: str | None) -> tuple[str, str]:
        if not authorization:
            raise KeyRejectedError("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise KeyRejectedError("send the key as 'Authorization: Bearer <key>'")
        m = _KEY_RE.match(token)
        if not m:
            raise KeyRejectedError("malformed API key")
        return token, m.group(1)

    @staticmethod
    def _check(token: str, key_hash: str | None, key: ApiKey | None) -> ApiKey:
        given = _hash(token)
        # Compare even when the id is unknown, so timing does not tell ids apart.
        if not hmac.compare_digest(given, key_hash or "0" * 64) or key is None:
            raise KeyRejectedError("unknown API key")
        if key.revoked_at is not None:
            raise KeyRejectedError(f"API key {key.id} was revoked")
        if key.expired:
            raise KeyRejectedError(f"API key {key.id} expired at {key.expires_at}")
        return key

    def authenticate_cached(self, authorization: str | None) -> ApiKey | None:
        """Like :meth:`authenticate` from the cache only; None when it must ask the database."""
        token, key_id = self._parse(authorization)
        hit = self._cache.get(key_id)
        if hit is None or time.monotonic() - hit[0] >= self._ttl:
            return None
        return self._check(token, hit[1], hit[2])

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The key behind an ``Authorization: Bearer`` header.

        Raises:
            KeyRejectedError: the header is missing or malformed, or the key is
                unknown, revoked or expired.
        """
        token, key_id = self._parse(authorization)
        key_hash, key = self._lookup(key_id)
        return self._check(token, key_hash, key)


class RateLimiter:
    """Token buckets per key, in process memory (one serving process per home)."""

    def __init__(self, default_rate: str) -> None:
        self.default_rate = default_rate
        self._default = parse_rate(default_rate)
        self._buckets: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key_id: str, rate: str | None, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; 0.0 if allowed, else seconds until it would be."""
        per_s, capacity = parse_rate(rate) if rate else self._default
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(key_id)
            if bucket is None:
                bucket = self._buckets[key_id] = [capacity, now]
            tokens = min(capacity, bucket[0] + (now - bucket[1]) * per_s)
            bucket[1] = now
            if tokens >= cost:
                bucket[0] = tokens - cost
                return 0.0
            bucket[0] = tokens
            return (cost - tokens) / per_s

    def check(self, key: ApiKey, cost: float = 1.0) -> None:
        """Take ``cost`` tokens from ``key``'s bucket (its own rate, else the default).

        Raises:
            RateLimitedError: the bucket is empty; ``retry_after_s`` says for how long.
        """
        wait = self.acquire(key.id, key.rate, cost)
        if wait > 0:
            rate = key.rate or self.default_rate
            raise RateLimitedError(f"rate limit of {rate} exceeded for key {key.id}", wait)
