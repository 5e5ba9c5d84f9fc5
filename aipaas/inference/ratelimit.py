"""Per-key token buckets shared by every serving process of one host, in one mapped file.

Invariant: however many replicas of ``aipaas serve --replicas N`` a key's
requests land on, they take tokens from one bucket, so the key gets its
configured rate in total (plus one burst), never N times it. The buckets live
in ``<home>/serving/ratelimits.bin``, a fixed table of slots mapped into
every replica's memory; a check holds an exclusive ``flock`` on that file
for a few microseconds while it refills and takes from the key's slot.

Why this store and not the platform database: replicas are processes of
one host (Ray Serve across hosts is a different backend), so the host's
memory is shared ground already. A database row updated per request would
add a round trip and, on SQLite, contend with the audit writer for the one
write lock; ``bench/bench_replicas.py`` measures the three side by side.
Local buckets per replica (rate / N each) were not an option: the kernel
spreads connections unevenly, so a client would get less than its rate.

Failure modes, bounded: the kernel drops a dead replica's ``flock``, so a
``kill -9`` cannot wedge the others; a replica killed half-way through an
update leaves at worst one key's bucket with a wrong count, which is
clamped to ``[0, capacity]`` on the next check. The table holds
:data:`SLOTS` keys; past that, the least recently used slot among a key's
probe sequence is reused with a full bucket (that key gets at most one
extra burst). ``CLOCK_MONOTONIC`` is one clock for every process of the
host, so timestamps written by one replica mean the same to another.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import threading
import time
from pathlib import Path

from aipaas.exceptions import ConfigurationError
from aipaas.inference.keys import RateLimiter, parse_rate
from aipaas.settings import Settings

SLOTS = 4096
PROBES = 8
# fingerprint (0: empty), tokens, last refill (CLOCK_MONOTONIC seconds)
_SLOT = struct.Struct("<Qdd")
_SIZE = SLOTS * _SLOT.size


def limits_path(settings: Settings) -> Path:
    """The file every serving process of this home shares its buckets through."""
    return settings.home / "serving" / "ratelimits.bin"


def _fingerprint(key_id: str) -> int:
    # Never 0, which marks an empty slot.
    return int.from_bytes(hashlib.blake2b(key_id.encode(), digest_size=8).digest(), "little") | 1


class SharedBuckets:
    """Token buckets in a file mapped by every replica; see the module docstring.

    ``acquire`` has the signature of the in-process limiter's, so the
    serving tier cannot tell them apart.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise ConfigurationError(
                f"cannot open the shared rate-limit file {str(path)!r}: {err}; "
                "check that AIPAAS_HOME is writable"
            ) from err
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if os.fstat(self._fd).st_size < _SIZE:  # the first replica sizes it (zeros: empty)
                os.ftruncate(self._fd, _SIZE)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._map = mmap.mmap(self._fd, _SIZE)
        # flock belongs to the open file, which this process's threads share.
        self._lock = threading.Lock()

    def acquire(self, key_id: str, per_s: float, capacity: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens from ``key_id``'s bucket; 0.0 if allowed, else seconds to wait."""
        fp = _fingerprint(key_id)
        start = fp % SLOTS
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                now = time.monotonic()
                offset, tokens, last = self._slot(fp, start, capacity, now)
                tokens = min(capacity, max(0.0, tokens) + max(0.0, now - last) * per_s)
                if tokens >= cost:
                    _SLOT.pack_into(self._map, offset, fp, tokens - cost, now)
                    return 0.0
                _SLOT.pack_into(self._map, offset, fp, tokens, now)
                return (cost - tokens) / per_s
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _slot(self, fp: int, start: int, capacity: float, now: float) -> tuple[int, float, float]:
        """The key's slot (offset, tokens, last): its own, an empty one, or the stalest probed."""
        stalest: tuple[float, int] | None = None
        for i in range(PROBES):
            offset = ((start + i) % SLOTS) * _SLOT.size
            owner, tokens, last = _SLOT.unpack_from(self._map, offset)
            if owner == fp:
                return offset, tokens, last
            if owner == 0:
                return offset, capacity, now
            if stalest is None or last < stalest[0]:
                stalest = (last, offset)
        assert stalest is not None
        return stalest[1], capacity, now

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


class SharedRateLimiter(RateLimiter):
    """:class:`aipaas.inference.keys.RateLimiter` over :class:`SharedBuckets`: one rate in total."""

    def __init__(self, default_rate: str, path: Path) -> None:
        super().__init__(default_rate)
        self.buckets = SharedBuckets(path)

    def acquire(self, key_id: str, rate: str | None, cost: float = 1.0) -> float:
        per_s, capacity = parse_rate(rate) if rate else self._default
        return self.buckets.acquire(key_id, per_s, capacity, cost)
