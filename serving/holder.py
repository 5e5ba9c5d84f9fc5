"""The served models and their hot reload.

Each model name maps to one :class:`ServedModel`, replaced as a whole when
``champion`` moves: a request takes the reference once and finishes on that
version even if a swap happens meanwhile. A new version is loaded and warmed
in a worker thread beside the old one; only then is the reference swapped.
A version that fails to load leaves the old one serving and is audited; an
unreachable registry only delays the next check. What serving obeys of the
model definition (may raw inputs be stored?) comes with the loaded version,
from its registry tags: a serving host needs the registry, not ``models/``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, TypeAdapter

from aipaas.exceptions import AipaasError, RegistryUnavailableError
from aipaas.inference import predictor
from aipaas.inference.predictor import LoadedModel
from aipaas.settings import Settings
from aipaas.training import signals
from serving.schemas import request_model

log = logging.getLogger(__name__)


class ModelSource(Protocol):
    """Where versions come from: the MLflow registry, or a fake in tests."""

    def champion(self, name: str) -> str | None:
        """The version that should serve, None if no champion is set."""

    def load(self, name: str, version: str) -> LoadedModel:
        """Load and warm a version (slow; runs in a worker thread)."""


class RegistrySource:
    """The real source: ``champion`` alias and ``models:/`` URIs in MLflow."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def champion(self, name: str) -> str | None:
        return predictor.champion_version(self._settings, name)

    def load(self, name: str, version: str) -> LoadedModel:
        return predictor.load_model(self._settings, name, version)


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


class ModelHolder:
    """The models this process serves, swapped atomically."""

    def __init__(self, source: ModelSource, on_event: AuditEvent, names: list[str]) -> None:
        self._source = source
        self._on_event = on_event
        self.names = list(dict.fromkeys(names))
        self._models: dict[str, ServedModel] = {}
        self._locks = {n: threading.Lock() for n in self.names}
        self.last_error: dict[str, str] = {}
        # model -> why the version its alias points at was refused (e.g. unsigned)
        self.refused: dict[str, str] = {}
        self.follower_error: str | None = None
        self.loads = 0
        self.failures = 0

    def get(self, name: str) -> ServedModel | None:
        return self._models.get(name)

    def all(self) -> dict[str, ServedModel]:
        return dict(self._models)

    def refresh(self, name: str) -> str:
        """Bring ``name`` to its champion; returns what happened (for logs and tests).

        Outcomes: ``unchanged``, ``no-champion``, ``loaded``, ``swapped``,
        ``failed`` (old version keeps serving), ``registry-unavailable``.
        """
        with self._locks.setdefault(name, threading.Lock()):
            current = self._models.get(name)
            try:
                version = self._source.champion(name)
            except RegistryUnavailableError as err:
                self.last_error[name] = str(err)
                log.warning("registry unavailable, %s keeps serving: %s", name, err)
                return "registry-unavailable"
            if version is None:
                return "no-champion"
            if current is not None and current.version == version:
                return "unchanged"
            started = time.perf_counter()
            try:
                served = serve_model(self._source.load(name, version))
            except AipaasError as err:
                self._load_failed(name, version, current, err)
                return "failed"
            return self._swap_in(name, served, current, time.perf_counter() - started)

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


async def follow_champions(holder: ModelHolder, settings: Settings, *, tick_s: float = 0.5) -> None:
    """Poll the registry every ``reload_poll_s``; reload at once when promotion signals."""
    poll = settings.serving.reload_poll_s
    next_poll = {n: time.monotonic() + poll for n in holder.names}
    marks = {n: signals.marker_mtime(settings, n) for n in holder.names}
    while True:
        await asyncio.sleep(tick_s)
        now = time.monotonic()
        for name in holder.names:
            mark = signals.marker_mtime(settings, name)
            if mark != marks[name] or now >= next_poll[name]:
                marks[name] = mark
                next_poll[name] = now + poll
                await asyncio.to_thread(holder.refresh, name)
