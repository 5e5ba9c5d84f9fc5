"""Console sessions: an admin key exchanged once for a signed, expiring cookie.

The key itself never reaches a page or a cookie. The cookie holds a session
id, the key's id and name, the session's CSRF token and its expiry, signed
(itsdangerous, HMAC-SHA256) under a key derived from the audit key, so no
other process can mint one and rotating the audit key ends every session.
Every page also re-reads the key: revoking it, or taking away its ``admin``
scope, ends its sessions at once. Logging out is an audited
``console.logout`` event naming the session, and a session whose logout is on
the audit trail is refused by every serving process sharing the platform
database (:func:`logged_out`), not only by the one that logged it out. The
cookie is ``HttpOnly``, ``SameSite=Strict``, ``Secure`` under TLS, and expires
after :data:`SESSION_S` in any case.

Failed logins are throttled per client address (:class:`LoginThrottle`): an
admin key has 190 random bits, so this is not what keeps it safe, but it
keeps a guessing script from filling the audit trail and the CPU.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import select

from aipaas import db
from aipaas.settings import Settings

COOKIE = "aipaas_console"
SESSION_S = 8 * 3600
_SALT = "aipaas.console.session"
_DERIVE = b"aipaas console session cookie v1"


class LoginRequiredError(Exception):
    """No valid session: the console answers with the login page (a redirect)."""


class CsrfRefusedError(Exception):
    """A form came without this session's CSRF token: refused, nothing changed."""


@dataclass(frozen=True)
class Session:
    sid: str
    key_id: str
    owner: str
    csrf: str
    expires_at: float


def session_secret(settings: Settings) -> bytes:
    """The cookie signing key: derived from the audit key, never the audit key itself."""
    audit_key = settings.audit.hmac_key.get_secret_value().encode()
    return hmac.new(audit_key, _DERIVE, hashlib.sha256).digest()


LOGOUT_EVENT = "console.logout"


def logged_out(settings: Settings, session: Session) -> bool:
    """Whether the audit trail holds this session's logout (from any serving process).

    One indexed lookup (event, then the key's few logouts) per page a
    logged-in admin opens.
    """
    t = db.audit_log
    query = (
        select(t.c.detail)
        .where(t.c.event == LOGOUT_EVENT, t.c.key_id == session.key_id)
        .where(t.c.detail.contains(session.sid))
        .limit(1)
    )
    with db.engine(settings).connect() as conn:
        return conn.execute(query).first() is not None


class SessionCodec:
    """Issue and read session cookies; refuses sessions logged out here or elsewhere.

    ``ended_elsewhere`` says whether another process logged a session out (by
    default :func:`logged_out` on the platform database; None in unit tests
    of the cookie alone).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        max_age_s: float = SESSION_S,
        clock: Callable[[], float] = time.time,
        ended_elsewhere: Callable[[Session], bool] | None = None,
    ) -> None:
        self._serializer = URLSafeSerializer(session_secret(settings), salt=_SALT)
        self.max_age_s = max_age_s
        self._clock = clock
        self._ended: dict[str, float] = {}  # sid -> its expiry
        self._lock = threading.Lock()
        self._ended_elsewhere = ended_elsewhere

    def issue(self, key_id: str, owner: str) -> tuple[Session, str]:
        """A new session for a key that was just checked; returns it and its cookie value."""
        session = Session(
            sid=secrets.token_urlsafe(16),
            key_id=key_id,
            owner=owner,
            csrf=secrets.token_urlsafe(32),
            expires_at=self._clock() + self.max_age_s,
        )
        payload = {
            "s": session.sid,
            "k": session.key_id,
            "o": session.owner,
            "c": session.csrf,
            "e": session.expires_at,
        }
        return session, self._serializer.dumps(payload)

    def read(self, token: str | None) -> Session | None:
        """The session a cookie carries, or None: missing, forged, expired or logged out."""
        if not token:
            return None
        try:
            data: Any = self._serializer.loads(token)
            session = Session(
                sid=str(data["s"]),
                key_id=str(data["k"]),
                owner=str(data["o"]),
                csrf=str(data["c"]),
                expires_at=float(data["e"]),
            )
        except (BadSignature, KeyError, TypeError, ValueError):
            return None
        if session.expires_at <= self._clock():
            return None
        with self._lock:
            if session.sid in self._ended:
                return None
        if self._ended_elsewhere is not None and self._ended_elsewhere(session):
            self.end(session)
            return None
        return session

    def end(self, session: Session) -> None:
        """Forget a session (logout): its cookie no longer works here, even if replayed."""
        now = self._clock()
        with self._lock:
            self._ended = {sid: exp for sid, exp in self._ended.items() if exp > now}
            self._ended[session.sid] = session.expires_at


def csrf_ok(session: Session, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(token.encode(), session.csrf.encode())


class LoginThrottle:
    """At most ``failures`` failed logins per client address in ``window_s``, then wait.

    Counted in this process: a second replica counts its own (the bound is
    ``failures`` per replica), which is enough for a throttle whose job is
    to slow a script down, not to keep a secret.
    """

    def __init__(
        self,
        failures: int = 5,
        window_s: float = 300.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.window_s = window_s
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float:
        """Seconds ``client`` must wait before trying again; 0 when it may try now."""
        now = self._clock()
        with self._lock:
            recent = self._recent(client, now)
            if len(recent) < self.failures:
                return 0.0
            return max(0.0, recent[0] + self.window_s - now)

    def failed(self, client: str) -> None:
        now = self._clock()
        with self._lock:
            self._recent(client, now).append(now)
            if len(self._seen) > 10_000:  # bounded: drop addresses with nothing recent
                self._seen = {c: q for c, q in self._seen.items() if self._recent(c, now)}

    def _recent(self, client: str, now: float) -> deque[float]:
        recent = self._seen.setdefault(client, deque())
        while recent and recent[0] <= now - self.window_s:
            recent.popleft()
        return recent
