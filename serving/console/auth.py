"""Console sessions: an admin key exchanged once for a signed, expiring cookie.

The key itself never reaches a page or a cookie. The cookie holds a session
id, the key's id and name, the session's CSRF token and its expiry, signed
(itsdangerous, HMAC-SHA256) under a key derived from the audit key, so no
other process can mint one and rotating the audit key ends every session.
Every page also re-reads the key: revoking it, or taking away its ``admin``
scope, ends its sessions at once. Logging out forgets the session in this
process; the cookie is ``HttpOnly``, ``SameSite=Strict``, ``Secure`` under TLS,
and expires after :data:`SESSION_S` in any case.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

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


class SessionCodec:
    """Issue and read session cookies; remembers sessions logged out in this process."""

    def __init__(
        self,
        settings: Settings,
        *,
        max_age_s: float = SESSION_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._serializer = URLSafeSerializer(session_secret(settings), salt=_SALT)
        self.max_age_s = max_age_s
        self._clock = clock
        self._ended: dict[str, float] = {}  # sid -> its expiry
        self._lock = threading.Lock()

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
        return session

    def end(self, session: Session) -> None:
        """Forget a session (logout): its cookie no longer works here, even if replayed."""
        now = self._clock()
        with self._lock:
            self._ended = {sid: exp for sid, exp in self._ended.items() if exp > now}
            self._ended[session.sid] = session.expires_at


def csrf_ok(session: Session, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(token.encode(), session.csrf.encode())
