"""Per-client API keys: created from the CLI, stored hashed, scoped, revocable, rotatable.

A key reads ``aip_<id>_<secret>``: the public ``id`` finds the row (and is
what the audit trail and usage name), the secret is only ever shown once.
The database keeps the SHA-256 of the whole key; the secret has 192 bits of
entropy, so a slow password hash would buy nothing and cost every request.
Comparison is constant-time.

Scopes: ``predict`` (every model) or ``predict:<model>``, ``feedback``
(or ``feedback:<model>``), and ``admin`` (usage, admin routes; implies all).

A key is *secret* (for servers) or *publishable* (``aip_pub_<id>_<secret>``,
for a browser app whose page anyone can read, like a payment or maps API's
publishable key). A publishable key holds only predict scopes and works only
with an ``Origin`` header among its origins (:meth:`ApiKey.check_origin`).
Browsers set ``Origin`` and pages cannot forge it, so a leaked publishable
key is useless to another web site; a non-browser client can send any
``Origin``, so the key's rate limit and quota are the real bound on misuse.
Origins are exact ``scheme://host[:port]`` (:func:`parse_origins`), as a
browser serializes them: no path, no wildcard.

A key may also carry *pins* (``{"diagnosis": "3"}``: its requests are
answered by that version instead of the champion; only a version with a
valid signed promotion record may be pinned, checked when the key is
created), a *quota* of requests per period (``"10000/day"``) and a *budget*
of cost per period (``"50/month"``), enforced by
:class:`aipaas.inference.quotas.Quotas`.

Rotation gives a key a new secret under the same id; the previous secret
keeps working until the grace period ends (one previous secret at a time),
so clients can switch without downtime. Serving trusts a looked-up row for
``KeyStore.ttl_s``: a rotation, like a revocation, takes effect within it.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from functools import lru_cache

from sqlalchemy import select, update

from aipaas import audit, db
from aipaas.exceptions import (
    ConfigurationError,
    KeyRejectedError,
    ModelNotFoundError,
    RateLimitedError,
    RegistryUnavailableError,
    RetiredSecretError,
    ScopeDeniedError,
    UnsignedVersionError,
)
from aipaas.inference.quotas import parse_budget, parse_quota
from aipaas.settings import Settings
from aipaas.training import attestation

PREFIX = "aip"
PUBLISHABLE_PREFIX = f"{PREFIX}_pub"
SECRET, PUBLISHABLE = "secret", "publishable"
KNOWN_SCOPES = ("predict", "feedback", "admin")
_KEY_RE = re.compile(rf"^{PREFIX}_(?:pub_)?([0-9a-f]{{12}})_([A-Za-z0-9_\-]{{20,}})$")
_ORIGIN_RE = re.compile(r"^(https?)://([a-z0-9.\-]+|\[[0-9a-f:.]+\])(?::(\d{1,5}))?/?$")
_DEFAULT_PORT = {"http": "80", "https": "443"}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
_PIN_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9_.\-]*)\s*=\s*(\d+)\s*$")
_GRACE_RE = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_GRACE_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NO_HASH = "0" * 64  # compared against when there is no hash, so timing tells nothing

# (model, version) -> that registry version's tags; the seam pins are checked through.
VersionTags = Callable[[str, str], Mapping[str, str]]


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
    kind: str = SECRET  # SECRET | PUBLISHABLE (a browser app's key)
    origins: tuple[str, ...] = ()  # where a publishable key works from
    # After a rotation: until when the previous secret is still accepted.
    prev_valid_until: str | None = None
    # True on the key :meth:`KeyStore.authenticate` returns for a caller that
    # used the previous secret (within its grace period).
    previous_secret: bool = False

    @property
    def active(self) -> bool:
        return self.revoked_at is None and not self.expired

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= _now_iso()

    @property
    def limited(self) -> bool:
        """Whether the key has a quota or a budget to count."""
        return self.quota is not None or self.budget is not None

    def allows(self, scope: str, model: str | None = None) -> bool:
        """Whether this key may use ``scope`` (on ``model``, for model routes)."""
        if "admin" in self.scopes:
            return True
        if scope in self.scopes:
            return True
        return model is not None and f"{scope}:{model}" in self.scopes

    @property
    def publishable(self) -> bool:
        return self.kind == PUBLISHABLE

    def check_origin(self, origin: str | None) -> None:
        """Refuse a publishable key used without an ``Origin`` among its origins.

        A secret key is not tied to origins: servers send none.

        Raises:
            KeyRejectedError: a publishable key, and ``origin`` missing or not one of its own.
        """
        if not self.publishable:
            return
        allowed = ", ".join(self.origins)
        if not origin:
            raise KeyRejectedError(
                f"API key {self.id} is publishable: it works only from a web page on "
                f"{allowed} (the request has no Origin header)"
            )
        if normalize_origin(origin) not in self.origins:
            raise KeyRejectedError(
                f"API key {self.id} is publishable: it works only from {allowed}, "
                f"not from {origin[:200]!r}"
            )

    def require(self, scope: str, model: str | None = None) -> None:
        """Refuse unless :meth:`allows`.

        Raises:
            ScopeDeniedError: the key does not hold ``scope`` (for ``model``).
        """
        if not self.allows(scope, model):
            target = f" on model {model!r}" if model else ""
            raise ScopeDeniedError(f"API key {self.id} lacks scope {scope!r}{target}")


@dataclass(frozen=True)
class Rotation:
    """A rotated key: its new secret (shown once) and when the previous one stops working."""

    key: ApiKey
    plaintext: str
    grace: str
    previous_valid_until: str


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _new_plaintext(key_id: str, kind: str = SECRET) -> str:
    prefix = PUBLISHABLE_PREFIX if kind == PUBLISHABLE else PREFIX
    return f"{prefix}_{key_id}_{secrets.token_urlsafe(24)}"


def normalize_origin(origin: str) -> str | None:
    """``origin`` as a browser serializes it (lower case, no default port), or None if not one.

    ``"https://Shop.Example:443/"`` -> ``"https://shop.example"``; a path, a
    query, a wildcard, user info or a scheme other than http(s) -> None.
    """
    m = _ORIGIN_RE.match(origin.strip().lower())
    if not m:
        return None
    scheme, host, port = m.groups()
    if port is not None and (not 0 < int(port) < 65536):
        return None
    if port is None or int(port) == int(_DEFAULT_PORT[scheme]):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{int(port)}"


def parse_origins(origins: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"https://shop.example,http://localhost:3000"`` (or a list) -> normalized origins.

    Raises:
        ConfigurationError: an entry that is not ``scheme://host[:port]``; the
            message says what a valid one looks like.
    """
    items = origins.split(",") if isinstance(origins, str) else list(origins or ())
    out = []
    for raw in (i.strip() for i in items):
        if not raw:
            continue
        origin = normalize_origin(raw)
        if origin is None:
            raise ConfigurationError(
                f"origin {raw!r} is not like https://shop.example or http://localhost:3000 "
                "(http or https, a host and an optional port; no path, no wildcard)"
            )
        out.append(origin)
    return tuple(dict.fromkeys(out))


def _check_publishable(scopes: tuple[str, ...], origins: tuple[str, ...]) -> None:
    """A publishable key predicts from its origins, nothing else: its text is public."""
    wider = [s for s in scopes if s.split(":", 1)[0] != "predict"]
    if wider:
        raise ConfigurationError(
            f"a publishable key may only hold predict scopes (predict or predict:<model>), "
            f"not {','.join(wider)}: its text is readable by anyone who loads the page; "
            "use a secret key on a server for feedback or admin"
        )
    if not origins:
        raise ConfigurationError(
            "a publishable key needs --origins: the web origins it works from, "
            "like https://shop.example"
        )


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


def parse_pins(pins: Mapping[str, str | int] | Iterable[str] | None) -> dict[str, str]:
    """``{"diagnosis": 3}`` or ``["diagnosis=3"]`` (the CLI's ``--pin``) -> ``{"diagnosis": "3"}``.

    Raises:
        ConfigurationError: not ``model=version`` with a numeric version, or a model twice.
    """
    if not pins:
        return {}
    items = (
        [f"{m}={v}" for m, v in pins.items()]
        if isinstance(pins, Mapping)
        else [str(p) for p in pins]
    )
    out: dict[str, str] = {}
    for item in items:
        m = _PIN_RE.match(item)
        if not m:
            raise ConfigurationError(
                f"pin {item!r} is not like 'diagnosis=3' (a model and a registry version number)"
            )
        model, version = m.group(1), str(int(m.group(2)))
        if model in out:
            raise ConfigurationError(
                f"model {model!r} is pinned twice ({out[model]} and {version})"
            )
        out[model] = version
    return out


def parse_grace(grace: str) -> timedelta:
    """``"1h"``, ``"30m"``, ``"2d"``, ``"90s"`` -> the grace period of a rotation."""
    m = _GRACE_RE.match(grace or "")
    if not m:
        raise ConfigurationError(f"grace {grace!r} is not like '1h', '30m', '2d' or '0s'")
    return timedelta(seconds=int(m.group(1)) * _GRACE_UNIT[m.group(2)])


def _registry_tags(settings: Settings) -> VersionTags:
    """Reads a version's tags from the MLflow registry (connected once, here)."""
    from aipaas.training import registry

    registry.connect(settings)
    return lambda model, version: registry.get_version(model, version).tags


def check_pins(
    settings: Settings, pins: Mapping[str, str], version_tags: VersionTags | None = None
) -> None:
    """Refuse pins on versions that were never promoted: only a signed promotion record counts.

    Args:
        version_tags: where a version's tags come from (default: the MLflow registry).

    Raises:
        UnsignedVersionError: the version has no valid promotion record.
        ModelNotFoundError: the registry has no such model version.
        RegistryUnavailableError: the registry did not answer, so nothing can be checked.
    """
    if not pins:
        return
    listed = ", ".join(f"{m}={v}" for m, v in pins.items())
    try:
        lookup = version_tags or _registry_tags(settings)
    except RegistryUnavailableError as err:
        raise RegistryUnavailableError(f"cannot check the pins {listed}: {err}") from err
    for model, version in pins.items():
        where = f"cannot pin {model}={version}"
        try:
            attestation.verify(settings, model, version, lookup(model, version))
        except UnsignedVersionError as err:
            raise UnsignedVersionError(
                f"{where}: only a version that was promoted at some time may be pinned; {err}"
            ) from err
        except ModelNotFoundError as err:
            raise ModelNotFoundError(f"{where}: {err}") from err
        except RegistryUnavailableError as err:
            raise RegistryUnavailableError(f"{where}: {err}") from err


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
        prev_valid_until=r.prev_valid_until,  # type: ignore[attr-defined]
        kind=r.kind or SECRET,  # type: ignore[attr-defined]
        origins=tuple(o for o in (r.origins or "").split(",") if o),  # type: ignore[attr-defined]
    )


def _new_record(
    name: str,
    scopes: str | list[str],
    *,
    rate: str | None,
    expires: str | None,
    pins: Mapping[str, str | int] | Iterable[str] | None,
    quota: str | None,
    budget: str | None,
    origins: str | Iterable[str] | None = None,
    publishable: bool = False,
) -> ApiKey:
    """A new key's record, every field validated (nothing stored yet)."""
    if not name.strip():
        raise ConfigurationError("a key needs a --name naming its client")
    scope_t = parse_scopes(scopes)
    origin_t = parse_origins(origins)
    if publishable:
        _check_publishable(scope_t, origin_t)
    elif origin_t:
        raise ConfigurationError(
            "--origins is for publishable keys (add --publishable); a secret key "
            "is used from servers, which send no Origin"
        )
    if rate is not None:
        parse_rate(rate)
    if quota is not None:
        parse_quota(quota)
    if budget is not None:
        parse_budget(budget)
    return ApiKey(
        id=secrets.token_hex(6),
        name=name.strip(),
        scopes=scope_t,
        rate=rate,
        created_at=_now_iso(),
        expires_at=parse_expiry(expires),
        revoked_at=None,
        pins=parse_pins(pins),
        quota=quota.strip() if quota else None,
        budget=budget.strip() if budget else None,
        kind=PUBLISHABLE if publishable else SECRET,
        origins=origin_t,
    )


def create_key(
    settings: Settings,
    name: str,
    scopes: str | list[str],
    *,
    rate: str | None = None,
    expires: str | None = None,
    pins: Mapping[str, str | int] | Iterable[str] | None = None,
    quota: str | None = None,
    budget: str | None = None,
    version_tags: VersionTags | None = None,
    publishable: bool = False,
    origins: str | Iterable[str] | None = None,
) -> tuple[ApiKey, str]:
    """Create a key (audited); returns its record and the plaintext key, never stored.

    Everything is checked before anything is written: a malformed field, a
    publishable key with a scope beyond predict or without origins, or a pin
    on a version that was never promoted (see :func:`check_pins`), leaves no
    key behind.
    """
    record = _new_record(
        name,
        scopes,
        rate=rate,
        expires=expires,
        pins=pins,
        quota=quota,
        budget=budget,
        origins=origins,
        publishable=publishable,
    )
    check_pins(settings, record.pins, version_tags)
    plaintext = _new_plaintext(record.id, record.kind)
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
                pins=json.dumps(record.pins, sort_keys=True) if record.pins else None,
                quota=record.quota,
                budget=record.budget,
                kind=PUBLISHABLE if record.publishable else None,
                origins=",".join(record.origins) or None,
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
            "pins": record.pins,
            "quota": record.quota,
            "budget": record.budget,
            "kind": record.kind,
            "origins": list(record.origins),
        },
        key_id=record.id,
        owner=record.name,
    )
    return record, plaintext


def list_keys(settings: Settings) -> list[ApiKey]:
    """Every key, oldest first.

    Raises:
        DatabaseUnavailableError: the platform database did not answer.
    """
    with db.reachable(), db.engine(settings).connect() as conn:
        rows = conn.execute(select(db.api_keys).order_by(db.api_keys.c.created_at)).all()
    return [_row(r) for r in rows]


def publishable_origins(settings: Settings) -> frozenset[str]:
    """The origins of every active publishable key: where browser apps may call from."""
    t = db.api_keys
    with db.reachable(), db.engine(settings).connect() as conn:
        rows = conn.execute(
            select(t).where(t.c.kind == PUBLISHABLE, t.c.revoked_at.is_(None))
        ).all()
    return frozenset(o for k in map(_row, rows) if k.active for o in k.origins)


def get_key(settings: Settings, key_id: str) -> ApiKey | None:
    with db.reachable(), db.engine(settings).connect() as conn:
        r = conn.execute(select(db.api_keys).where(db.api_keys.c.id == key_id)).first()
    return _row(r) if r is not None else None


def _unknown(settings: Settings, key_id: str) -> ConfigurationError:
    known = ", ".join(k.id for k in list_keys(settings)) or "none"
    return ConfigurationError(f"no key with id {key_id!r} (known: {known})")


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
        raise _unknown(settings, key_id)
    if res.rowcount == 0 and key.revoked_at is None:  # pragma: no cover - race
        raise ConfigurationError(f"key {key_id} could not be revoked")
    if res.rowcount:
        audit.append_event(
            settings, "key.revoked", {"name": key.name}, key_id=key.id, owner=key.name
        )
    return key


def rotate_key(
    settings: Settings, key_id: str, grace: str = "1h", *, now: datetime | None = None
) -> Rotation:
    """Give a key a new secret; the current one keeps working for ``grace`` (audited).

    A secret replaced by an earlier rotation stops at once: a key has at most
    one previous secret. The ``key.rotated`` record names the grace deadline.

    Raises:
        ConfigurationError: unknown, revoked or expired key, or a malformed ``grace``.
    """
    span = parse_grace(grace)
    key = get_key(settings, key_id)
    if key is None:
        raise _unknown(settings, key_id)
    if key.revoked_at is not None:
        raise ConfigurationError(f"key {key_id} was revoked at {key.revoked_at}; create a new key")
    if key.expired:
        raise ConfigurationError(f"key {key_id} expired at {key.expires_at}; create a new key")
    until = audit.iso_utc((now or _utcnow()) + span)
    plaintext = _new_plaintext(key_id, key.kind)
    t = db.api_keys
    with db.engine(settings).begin() as conn:
        current = conn.execute(select(t.c.key_hash).where(t.c.id == key_id)).scalar_one()
        conn.execute(
            update(t)
            .where(t.c.id == key_id, t.c.key_hash == current)
            .values(key_hash=_hash(plaintext), prev_key_hash=current, prev_valid_until=until)
        )
    audit.append_event(
        settings,
        "key.rotated",
        {"name": key.name, "grace": grace.strip(), "previous_secret_valid_until": until},
        key_id=key.id,
        owner=key.name,
    )
    return Rotation(
        key=replace(key, prev_valid_until=until),
        plaintext=plaintext,
        grace=grace.strip(),
        previous_valid_until=until,
    )


@dataclass(frozen=True, slots=True)
class _Entry:
    """A cached lookup: when, the hashes of the current and previous secrets, the key."""

    at: float
    key_hash: str | None
    prev_hash: str | None
    key: ApiKey | None


class KeyStore:
    """Authenticates bearer tokens for serving, with a short cache.

    The cache keeps the database off the request path; a revocation or a
    rotation made by another process (the CLI) takes effect within ``ttl_s``.
    It fails closed: once an entry is older than ``ttl_s`` it is never used
    again, even while the database is away (the lookup then raises
    :class:`~aipaas.db.DatabaseUnavailableError`, a 503), so an outage can
    never stretch the life of a revoked key; a failed lookup is not cached.
    A previous secret's grace deadline is checked on every request against
    ``clock`` (injectable for tests), so it ends on time.
    """

    def __init__(
        self, settings: Settings, ttl_s: float = 2.0, *, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        self._settings = settings
        self._ttl = ttl_s
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def _lookup(self, key_id: str) -> _Entry:
        now = time.monotonic()
        hit = self._cache.get(key_id)
        if hit is not None and now - hit.at < self._ttl:
            return hit
        with db.reachable(), db.engine(self._settings).connect() as conn:
            r = conn.execute(select(db.api_keys).where(db.api_keys.c.id == key_id)).first()
        entry = (
            _Entry(now, r.key_hash, r.prev_key_hash, _row(r))
            if r is not None
            else _Entry(now, None, None, None)
        )
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key_id] = entry
        return entry

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

    def _check(self, token: str, entry: _Entry) -> ApiKey:
        given = _hash(token)
        # Compare both, even when the id is unknown, so timing does not tell ids apart.
        current = hmac.compare_digest(given, entry.key_hash or _NO_HASH)
        previous = hmac.compare_digest(given, entry.prev_hash or _NO_HASH)
        key = entry.key
        if not (current or previous) or key is None:
            raise KeyRejectedError("unknown API key")
        if key.revoked_at is not None:
            raise KeyRejectedError(f"API key {key.id} was revoked")
        if key.expired:
            raise KeyRejectedError(f"API key {key.id} expired at {key.expires_at}")
        if current:
            return key
        ends = key.prev_valid_until
        if ends is None or audit.iso_utc(self._clock()) >= ends:
            raise RetiredSecretError(key.id, ends)
        return replace(key, previous_secret=True)

    def authenticate_cached(self, authorization: str | None) -> ApiKey | None:
        """Like :meth:`authenticate` from the cache only; None when it must ask the database."""
        token, key_id = self._parse(authorization)
        hit = self._cache.get(key_id)
        if hit is None or time.monotonic() - hit.at >= self._ttl:
            return None
        return self._check(token, hit)

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The key behind an ``Authorization: Bearer`` header.

        Raises:
            KeyRejectedError: the header is missing or malformed, or the key is
                unknown, revoked or expired.
            RetiredSecretError: the key's previous secret, past its grace period.
            DatabaseUnavailableError: the key was not cached and the platform
                database did not answer.
        """
        token, key_id = self._parse(authorization)
        return self._check(token, self._lookup(key_id))


class RateLimiter:
    """Token buckets per key, in process memory: what one serving replica needs.

    With several replicas, :class:`aipaas.inference.ratelimit.SharedRateLimiter`
    (one host) or :class:`aipaas.inference.ratelimit.DatabaseRateLimiter`
    (PostgreSQL, every host) takes its place (same interface), so a key's
    rate holds in total.
    """

    blocking = False  # in memory: fine on the event loop

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
