"""The served models, their hot reload, and the versions keys and requests pin.

Each model name maps to one :class:`ServedModel`, replaced as a whole when
``champion`` moves: a request takes the reference once and finishes on that
version even if a swap happens meanwhile. A new version is loaded and warmed
in a worker thread beside the old one; only then is the reference swapped.
A version that fails to load leaves the old one serving and is audited; an
unreachable registry only delays the next check. What serving obeys of the
model definition (may raw inputs be stored?) comes with the loaded version,
from its registry tags: a serving host needs the registry, not ``models/``.

Only a version with a signed promotion record serves. The source checks it
before loading anything: the champion's record must be the one the audit
chain recorded last (an alias moved by hand in MLflow, to a version never
promoted or back to an old one, is refused); a pinned version must have been
promoted at some time. A refused champion leaves the current version serving
(or nothing, if there was none): :attr:`ModelHolder.refused` says why, and a
``model.refused`` admin event is audited once per version and reason.

Pinned versions (a request's path or ``X-Model-Version``, a key's pins) are
loaded on demand in a worker thread, one load per version at a time. Those an
active key pins stay loaded (:meth:`ModelHolder.keep_pinned`, at each poll);
others sit in a small LRU cache. A champion swap never touches them.

A canary or shadow release (:mod:`aipaas.training.canary`) is followed with
the champion: at each poll and each promotion signal (a release's start and
end bump it too) the model's latest canary event is read from the audit
chain, and the challenger it names is loaded and warmed beside the champion
(:meth:`ModelHolder.canary` hands it to the routers). The chain decides, never
the registry's ``canary`` alias: an edited, unsigned or unreadable event means
no challenger serves, and the release's end drops it at once. A release whose
window ended over :data:`STALE_AFTER_S` ago with no end on record (its flow
died) gets no traffic either, and a challenger that fails to load gets none
(audited as ``model.load_failed``, said in ``/readyz``); the champion serves
on in every case.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, TypeAdapter

from aipaas.db import DatabaseUnavailableError
from aipaas.exceptions import (
    AipaasError,
    AuditIntegrityError,
    RegistryUnavailableError,
    UnsignedVersionError,
)
from aipaas.inference import keys, predictor
from aipaas.inference.predictor import LoadedModel
from aipaas.settings import Settings
from aipaas.training import signals
from serving.schemas import request_model

if TYPE_CHECKING:
    from aipaas.training.canary import CanaryState

log = logging.getLogger(__name__)

# Pinned versions no active key pins, kept loaded for later requests.
PIN_CACHE_SIZE = 4
# A release this long past its window with no end on record takes no traffic:
# the flow that should have judged and ended it is gone.
STALE_AFTER_S = 60.0


class ModelSource(Protocol):
    """Where versions come from: the MLflow registry, or a fake in tests."""

    def champion(self, name: str) -> str | None:
        """The version the ``champion`` alias names, None if it is unset."""

    def load(self, name: str, version: str) -> LoadedModel:
        """Load and warm the champion's version (slow; runs in a worker thread).

        Raises:
            UnsignedVersionError: it is not the champion on record.
        """

    def served_models(self) -> list[str]:
        """Every registered model that has a ``champion`` (discovery, when no allow-list)."""

    def load_pinned(self, name: str, version: str) -> LoadedModel:
        """Load and warm a version addressed explicitly (slow; a worker thread).

        Raises:
            UnsignedVersionError: it was never promoted.
        """

    def load_canary(self, name: str, version: str) -> LoadedModel:
        """Load and warm the challenger of a canary or shadow release (slow; a worker thread).

        Raises:
            UnsignedVersionError: no signed release of this version runs now.
        """


class RegistrySource:
    """The real source: ``champion`` alias and ``models:/`` URIs in MLflow."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def champion(self, name: str) -> str | None:
        return predictor.champion_version(self._settings, name)

    def served_models(self) -> list[str]:
        return predictor.models_with_champion(self._settings)

    def load(self, name: str, version: str) -> LoadedModel:
        return predictor.load_model(self._settings, name, version, require="champion")

    def load_pinned(self, name: str, version: str) -> LoadedModel:
        return predictor.load_model(self._settings, name, version, require="promoted")

    def load_canary(self, name: str, version: str) -> LoadedModel:
        return predictor.load_model(self._settings, name, version, require="canary")


@dataclass
class ServedModel:
    """A loaded version with its generated request schema."""

    loaded: LoadedModel
    record_model: type[BaseModel]
    attrs: tuple[str, ...]
    list_adapter: TypeAdapter[Any]
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.names = tuple(f.name for f in self.loaded.fields)

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def version(self) -> str:
        return self.loaded.version

    @property
    def log_inputs(self) -> bool:
        """Whether raw inputs may be stored: the version's ``aipaas.log_inputs`` tag."""
        return self.loaded.meta.log_inputs


def serve_model(loaded: LoadedModel) -> ServedModel:
    record, attrs = request_model(loaded.name, loaded.fields)
    return ServedModel(
        loaded=loaded,
        record_model=record,
        attrs=attrs,
        list_adapter=TypeAdapter(list[record]),  # type: ignore[valid-type]
    )


AuditEvent = Callable[[str, str, str | None, dict[str, Any]], None]
# The release running for a model now (None: none); raises AuditIntegrityError
# or DatabaseUnavailableError when it cannot be trusted or read.
CanaryReader = Callable[[str], "CanaryState | None"]


def canary_reader(settings: Settings) -> CanaryReader:
    """Read releases from the platform database's audit chain (:func:`predictor.active_canary`)."""

    def read(name: str) -> CanaryState | None:
        return predictor.active_canary(settings, name)

    return read


@dataclass(frozen=True)
class CanaryStatus:
    """What this process does about a model's canary or shadow release (``/readyz``).

    ``serving`` False with an ``error``: the release takes no traffic here, and why.
    """

    version: str | None
    mode: str | None = None
    percent: float | None = None
    until: str | None = None
    serving: bool = False
    error: str | None = None

    @classmethod
    def of(cls, state: CanaryState, *, error: str | None = None) -> CanaryStatus:
        until = datetime.fromtimestamp(state.until, UTC).isoformat(timespec="seconds")
        return cls(state.version, state.mode, state.percent, until, error is None, error)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Pin = tuple[str, str]  # (model, version)


class ModelHolder:
    """The models this process serves, swapped atomically, and the pinned versions."""

    def __init__(
        self,
        source: ModelSource,
        on_event: AuditEvent,
        names: list[str],
        *,
        cache_size: int = PIN_CACHE_SIZE,
        discover: bool = False,
        canaries: CanaryReader | None = None,
    ) -> None:
        self._source = source
        self._on_event = on_event
        # Kept as given (the caller's list: metrics reads the same one) and
        # grown by :meth:`discover` when there is no allow-list.
        names[:] = list(dict.fromkeys(names))
        self.names = names
        self.discovering = discover
        self._models: dict[str, ServedModel] = {}
        self._locks = {n: threading.Lock() for n in self.names}
        self.last_error: dict[str, str] = {}
        # model -> why the version its alias points at was refused (e.g. unsigned)
        self.refused: dict[str, str] = {}
        self._refusals: dict[str, tuple[str, str]] = {}  # model -> (version, reason) audited
        self.follower_error: str | None = None
        self.loads = 0
        self.failures = 0
        # Pinned versions: kept (an active key pins them) or cached (LRU, bounded).
        self._wanted: frozenset[Pin] = frozenset()
        self._kept: dict[Pin, ServedModel] = {}  # replaced whole: read without the lock
        self._cache: OrderedDict[Pin, ServedModel] = OrderedDict()
        self._cache_size = cache_size
        self._guard = threading.Lock()  # the pin tables above
        self._loading: dict[Pin, Future[ServedModel]] = {}  # one load per version at a time
        self._pin_errors: dict[Pin, str] = {}
        # Canary and shadow releases: the challenger serving for each (replaced
        # whole: read without a lock), and what /readyz says about each.
        self._read_canary = canaries
        self._releases: dict[str, tuple[CanaryState, ServedModel]] = {}
        self._canary_status: dict[str, CanaryStatus] = {}
        self._canary_noted: dict[str, str] = {}  # model -> the problem last logged

    def get(self, name: str) -> ServedModel | None:
        return self._models.get(name)

    def discover(self) -> list[str]:
        """Add every registered model with a champion to :attr:`names`; the ones added.

        Only without an allow-list (``serving.models`` empty). A registry that
        does not answer adds nothing this time.
        """
        if not self.discovering:
            return []
        try:
            found = self._source.served_models()
        except RegistryUnavailableError as err:
            log.warning("model discovery skipped: %s", err)
            return []
        added = [n for n in found if n not in self.names]
        for name in added:
            self._locks.setdefault(name, threading.Lock())
            self.names.append(name)  # one append: readers see it or not
            log.info("discovered model %s (it has a champion)", name)
        return added

    def all(self) -> dict[str, ServedModel]:
        return dict(self._models)

    def refresh(self, name: str) -> str:
        """Bring ``name`` to its champion; returns what happened (for logs and tests).

        Outcomes: ``unchanged``, ``no-champion``, ``loaded``, ``swapped``,
        ``refused`` and ``failed`` (old version keeps serving),
        ``registry-unavailable``. The model's canary or shadow release is
        followed too (:meth:`follow_canary`), whatever the champion's outcome.
        """
        with self._locks.setdefault(name, threading.Lock()):
            outcome = self._refresh_champion(name)
            self._follow_canary(name)
            return outcome

    def _refresh_champion(self, name: str) -> str:
        """Under the model's lock: :meth:`refresh` for the champion alone."""
        current = self._models.get(name)
        try:
            version = self._source.champion(name)
        except RegistryUnavailableError as err:
            self.last_error[name] = str(err)
            log.warning("registry unavailable, %s keeps serving: %s", name, err)
            return "registry-unavailable"
        if version is None or (current is not None and current.version == version):
            self._clear_refusal(name)
            return "no-champion" if version is None else "unchanged"
        started = time.perf_counter()
        try:
            served = serve_model(self._source.load(name, version))
        except UnsignedVersionError as err:
            self._refuse(name, version, current, err)
            return "refused"
        except AipaasError as err:
            self._load_failed(name, version, current, err)
            return "failed"
        except Exception as err:  # noqa: BLE001 - one model's bug never stops serving
            log.exception("loading %s v%s raised", name, version)
            wrapped = AipaasError(f"{name} v{version} failed to load: {type(err).__name__}: {err}")
            self._load_failed(name, version, current, wrapped)
            return "failed"
        self._clear_refusal(name)
        return self._swap_in(name, served, current, time.perf_counter() - started)

    def _refuse(
        self, name: str, version: str, current: ServedModel | None, err: UnsignedVersionError
    ) -> None:
        """Keep the current version; say why; audit it once per (version, reason)."""
        reason = str(err)
        self.refused[name] = reason
        if self._refusals.get(name) == (version, reason):
            return
        self._refusals[name] = (version, reason)
        serving = current.version if current else None
        log.error("refused %s v%s (serving: %s): %s", name, version, serving, reason)
        self._on_event("model.refused", name, version, {"reason": reason, "serving": serving})

    def _clear_refusal(self, name: str) -> None:
        self.refused.pop(name, None)
        self._refusals.pop(name, None)

    def _load_failed(
        self, name: str, version: str, current: ServedModel | None, err: AipaasError
    ) -> None:
        self.failures += 1
        self.last_error[name] = str(err)
        log.error("loading %s v%s failed; %s", name, version, err)
        serving = current.version if current else None
        self._on_event("model.load_failed", name, version, {"error": str(err), "serving": serving})

    def _swap_in(
        self, name: str, served: ServedModel, current: ServedModel | None, load_s: float
    ) -> str:
        old = current.version if current else None
        models = dict(self._models)
        models[name] = served
        self._models = models  # one reference assignment: the swap
        self.loads += 1
        self.last_error.pop(name, None)
        event = "model.swapped" if old else "model.loaded"
        detail = {"previous": old, "load_s": round(load_s, 3)}
        self._on_event(event, name, served.version, detail)
        log.info("%s %s v%s (was %s)", event, name, served.version, old)
        return "swapped" if old else "loaded"

    # --- canary and shadow releases ------------------------------------------------

    def canary(self, name: str) -> tuple[CanaryState, ServedModel] | None:
        """The release of ``name`` taking traffic here and its loaded challenger; None: none.

        None too once the release is :data:`STALE_AFTER_S` past its window
        (checked on each call: no poll needed for it to stop).
        """
        release = self._releases.get(name)
        if release is None or time.time() > release[0].until + STALE_AFTER_S:
            return None
        return release

    def canaries(self) -> dict[str, CanaryStatus]:
        """Per model with a release on record (or one that cannot be read): what happens here."""
        return dict(self._canary_status)

    def follow_canary(self, name: str) -> str:
        """Bring ``name``'s challenger in line with the chain (blocking: a worker thread).

        Outcomes: ``none``, ``unchanged``, ``loaded``, ``ended`` (the challenger
        dropped), and, with no challenger serving, ``unreadable``, ``stale``, ``failed``.
        """
        with self._locks.setdefault(name, threading.Lock()):
            return self._follow_canary(name)

    def _follow_canary(self, name: str) -> str:
        if self._read_canary is None:
            return "none"
        try:
            state = self._read_canary(name)
        except (AuditIntegrityError, DatabaseUnavailableError) as err:
            return self._no_canary(name, None, f"the canary state cannot be read: {err}")
        if state is None:
            return self._end_canary(name)
        if time.time() > state.until + STALE_AFTER_S:
            return self._no_canary(
                name,
                state,
                f"its window ended at {CanaryStatus.of(state).until} and no end is on record "
                "(did the canary flow stop?): no traffic goes to the challenger",
                outcome="stale",
            )
        current = self._releases.get(name)
        if current is not None and current[0].seq == state.seq:
            return "unchanged"
        served = current[1] if current is not None and current[1].version == state.version else None
        if served is None:
            try:
                served = self._load_canary(name, state)
            except AipaasError as err:
                return self._canary_failed(name, state, err)
            except Exception as err:  # noqa: BLE001 - a challenger's bug never stops serving
                log.exception("loading the challenger %s v%s raised", name, state.version)
                wrapped = AipaasError(
                    f"{name} v{state.version} failed to load: {type(err).__name__}: {err}"
                )
                return self._canary_failed(name, state, wrapped)
        self._releases = {**self._releases, name: (state, served)}
        self._canary_status = {**self._canary_status, name: CanaryStatus.of(state)}
        self._canary_noted.pop(name, None)
        log.info(
            "%s of %s v%s: %s%% of clients until %s",
            state.mode,
            name,
            state.version,
            state.percent if state.mode == "canary" else 100,
            CanaryStatus.of(state).until,
        )
        return "loaded"

    def _load_canary(self, name: str, state: CanaryState) -> ServedModel:
        started = time.perf_counter()
        served = serve_model(self._source.load_canary(name, state.version))
        detail = {
            "mode": state.mode,
            "percent": state.percent,
            "started_seq": state.seq,
            "load_s": round(time.perf_counter() - started, 3),
        }
        self._on_event("model.canary_loaded", name, state.version, detail)
        return served

    def _canary_failed(self, name: str, state: CanaryState, err: AipaasError) -> str:
        """No traffic to the challenger; audited once per (version, error), retried each poll."""
        reason = f"v{state.version} failed to load: {err}"
        if self._canary_noted.get(name) != reason:
            self.failures += 1
            champion = self._models.get(name)
            detail = {
                "error": str(err),
                "serving": champion.version if champion else None,
                "canary": state.mode,
            }
            self._on_event("model.load_failed", name, state.version, detail)
        return self._no_canary(name, state, reason, outcome="failed")

    def _no_canary(
        self, name: str, state: CanaryState | None, reason: str, *, outcome: str = "unreadable"
    ) -> str:
        """Send no traffic to a challenger of ``name``; say why, logged once per reason."""
        self._releases = {m: r for m, r in self._releases.items() if m != name}
        status = (
            CanaryStatus.of(state, error=reason)
            if state is not None
            else CanaryStatus(version=None, error=reason)
        )
        self._canary_status = {**self._canary_status, name: status}
        if self._canary_noted.get(name) != reason:
            self._canary_noted[name] = reason
            log.error("no canary traffic for %s: %s", name, reason)
        return outcome

    def _end_canary(self, name: str) -> str:
        ended = self._releases.get(name)
        self._releases = {m: r for m, r in self._releases.items() if m != name}
        self._canary_status = {m: s for m, s in self._canary_status.items() if m != name}
        self._canary_noted.pop(name, None)
        if ended is None:
            return "none"
        log.info(
            "the %s of %s v%s ended: the champion takes it all",
            ended[0].mode,
            name,
            ended[0].version,
        )
        return "ended"

    # --- pinned versions ---------------------------------------------------------

    def get_version(self, name: str, version: str) -> ServedModel | None:
        """``version`` of ``name`` if it is in memory (champion, kept or cached); never loads."""
        champion = self._models.get(name)
        if champion is not None and champion.version == version:
            return champion
        pin = (name, version)
        kept = self._kept.get(pin)
        if kept is not None:
            return kept
        with self._guard:
            cached = self._cache.get(pin)
            if cached is not None:
                self._cache.move_to_end(pin)
        return cached

    def load_version(self, name: str, version: str) -> ServedModel:
        """``version`` of ``name``, loaded now if need be: blocking, call it in a worker thread.

        One load per version at a time; concurrent callers wait for it and share it.

        Raises:
            UnsignedVersionError: the version was never promoted.
            ModelNotFoundError: no such version, or it does not load.
            RegistryUnavailableError: the registry did not answer.
        """
        served = self.get_version(name, version)
        if served is not None:
            self._remember(served)
            return served
        pin = (name, version)
        with self._guard:  # loaded meanwhile (a load remembers before it is done)?
            served = self._kept.get(pin) or self._cache.get(pin)
            loading = self._loading.get(pin)
            if served is None and loading is None:
                self._loading[pin] = mine = Future[ServedModel]()
        if served is not None:
            return served
        if loading is not None:
            return loading.result()
        try:
            served = self._load_pinned(name, version)
        except BaseException as err:
            mine.set_exception(err)
            raise
        else:
            mine.set_result(served)
        finally:
            with self._guard:
                del self._loading[pin]
        return served

    def _load_pinned(self, name: str, version: str) -> ServedModel:
        started = time.perf_counter()
        served = serve_model(self._source.load_pinned(name, version))
        self._remember(served)
        load_s = round(time.perf_counter() - started, 3)
        self._on_event("model.pin_loaded", name, version, {"load_s": load_s})
        log.info("loaded pinned %s v%s in %.3f s", name, version, load_s)
        return served

    def _remember(self, served: ServedModel) -> None:
        pin = (served.name, served.version)
        with self._guard:
            if pin in self._wanted:
                if self._kept.get(pin) is not served:
                    self._kept = {**self._kept, pin: served}
                self._cache.pop(pin, None)
            elif self._models.get(served.name) is not served:
                self._cache_put(pin, served)

    def _cache_put(self, pin: Pin, served: ServedModel) -> None:
        """Under ``_guard``: the newest entry of the LRU cache, the oldest evicted."""
        self._cache[pin] = served
        self._cache.move_to_end(pin)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def keep_pinned(self, pins: Mapping[str, Collection[str]]) -> None:
        """Keep loaded exactly the versions active keys pin (``{model: {version, ...}}``).

        Versions no longer pinned move to the LRU cache. A pinned version
        that cannot be loaded is logged (once per error) and left to the
        requests that ask for it, which get the error.
        """
        wanted = frozenset((n, str(v)) for n, vs in pins.items() if n in self.names for v in vs)
        with self._guard:
            self._wanted = wanted
            for pin, served in self._kept.items():
                if pin not in wanted:
                    self._cache_put(pin, served)
            self._kept = {p: m for p, m in self._kept.items() if p in wanted}
        for name, version in sorted(wanted):
            try:
                self.load_version(name, version)
            except AipaasError as err:
                if self._pin_errors.get((name, version)) != str(err):
                    log.warning("cannot keep %s v%s loaded for a key's pin: %s", name, version, err)
                self._pin_errors[(name, version)] = str(err)
            else:
                self._pin_errors.pop((name, version), None)

    def pinned(self) -> dict[Pin, str]:
        """The pinned versions in memory: ``"kept"`` (a key pins it) or ``"cached"``."""
        with self._guard:
            return {**dict.fromkeys(self._cache, "cached"), **dict.fromkeys(self._kept, "kept")}


def key_pins(settings: Settings) -> dict[str, set[str]]:
    """``{model: {version, ...}}`` pinned by the active API keys (the ``api_keys`` table)."""
    out: dict[str, set[str]] = {}
    for key in keys.list_keys(settings):
        if key.active:
            for model, version in key.pins.items():
                out.setdefault(model, set()).add(str(version))
    return out


def sync_pins(holder: ModelHolder, settings: Settings) -> None:
    """Keep the versions active keys pin loaded (blocking: a worker thread).

    While the platform database is away the pins cannot be read: the loaded
    versions stay, and the next poll reads the pins again.
    """
    try:
        pins = key_pins(settings)
    except DatabaseUnavailableError as err:
        log.warning("key pins unreadable, the loaded versions stay: %s", err.reason)
        return
    holder.keep_pinned(pins)


async def follow_champions(holder: ModelHolder, settings: Settings, *, tick_s: float = 0.5) -> None:
    """Poll the registry every ``reload_poll_s``; reload at once when promotion signals.

    Each poll also reads the keys' pins, so a version a new key pins is loaded
    before its first request (and one no key pins any more is let go).
    """
    poll = settings.serving.reload_poll_s
    next_poll = {n: time.monotonic() + poll for n in holder.names}
    # Each model's promotion signal counter (one query on the platform database
    # for all of them, every tick); a model whose counter moved reloads now.
    marks = await asyncio.to_thread(signals.champion_generations, settings, holder.names) or {}
    next_discovery = time.monotonic() + poll
    await asyncio.to_thread(sync_pins, holder, settings)
    while True:
        await asyncio.sleep(tick_s)
        now = time.monotonic()
        polled = False
        if holder.discovering and now >= next_discovery:
            next_discovery = now + poll
            for name in await asyncio.to_thread(holder.discover):
                next_poll[name] = now  # load it on this tick
        names = list(holder.names)
        # None: the database did not answer; the registry poll below still runs.
        seen = await asyncio.to_thread(signals.champion_generations, settings, names) or {}
        for name in names:
            mark = seen.get(name, marks.get(name, 0))
            if mark != marks.get(name, 0) or now >= next_poll[name]:
                marks[name] = mark
                next_poll[name] = now + poll
                await asyncio.to_thread(holder.refresh, name)
                polled = True
        if polled:
            await asyncio.to_thread(sync_pins, holder, settings)
