"""Version pinning, serving side: path > ``X-Model-Version`` > the key's pin > the champion.

The API tests run on a real MLflow store: v1 and v2 promoted (v2 champion),
v3 never promoted. The holder's loading rules (one load per version at a
time, pins kept, a bounded cache for the rest) are tested on a fake source.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from aipaas import audit
from aipaas.exceptions import UnsignedVersionError
from aipaas.inference import keys
from aipaas.inference.predictor import LoadedModel
from aipaas.settings import Settings
from serving.holder import ModelHolder
from tests.support.models import log_lgbm, make_champion
from tests.support.serving import FakeSource, bearer

MODEL = "diagnosis"
ROW = {"mean_radius": 1.0, "mean_texture": 0.0, "mean_area": 1.0}


@pytest.fixture
def versions(settings: Settings) -> tuple[str, str, str]:
    """v1 and v2 promoted (v2 is champion), v3 never promoted."""
    v1 = log_lgbm(settings)
    v2 = log_lgbm(settings, seed=1)
    v3 = log_lgbm(settings, champion=False, seed=2)
    return v1, v2, v3


def _answered(r: Any) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def test_a_pinned_key_keeps_its_version_across_a_champion_change(
    settings: Settings,
    versions: tuple[str, str, str],
    make_client: Callable[..., TestClient],
    predict_key: str,
    admin_key: str,
) -> None:
    v1, v2, v3 = versions
    _, pinned = keys.create_key(settings, "legacy", "predict", rate="1000/s", pins={MODEL: v1})
    c = make_client(model_source=None)
    assert c.post("/admin/reload", headers=bearer(admin_key)).status_code == 200
    assert c.app.state.components.holder.pinned() == {(MODEL, v1): "kept"}  # loaded before use
    assert _answered(c.post("/predict", json=ROW, headers=bearer(pinned))) == v1
    assert _answered(c.post("/predict", json=ROW, headers=bearer(predict_key))) == v2

    make_champion(settings, MODEL, v3)
    assert c.post("/admin/reload", headers=bearer(admin_key)).json()["outcomes"][MODEL] == "swapped"
    assert _answered(c.post("/predict", json=ROW, headers=bearer(pinned))) == v1
    assert _answered(c.post(f"/models/{MODEL}/predict", json=ROW, headers=bearer(pinned))) == v1
    assert _answered(c.post("/predict", json=ROW, headers=bearer(predict_key))) == v3
    r = c.post("/invocations", json={"dataframe_records": [ROW]}, headers=bearer(pinned))
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    # A request may still ask for another version than its key's pin.
    header = {**bearer(pinned), "X-Model-Version": v3}
    assert _answered(c.post("/predict", json=ROW, headers=header)) == v3


def test_per_request_pins_by_path_and_header_and_their_audit_records(
    settings: Settings,
    versions: tuple[str, str, str],
    make_client: Callable[..., TestClient],
    predict_key: str,
) -> None:
    v1, v2, _ = versions
    c = make_client(model_source=None)
    h = bearer(predict_key)
    by_path = c.post(f"/models/{MODEL}/versions/{v1}/predict", json=ROW, headers=h)
    by_header = c.post("/predict", json=ROW, headers={**h, "X-Model-Version": v1})
    path_wins = c.post(
        f"/models/{MODEL}/versions/{v2}/predict", json=ROW, headers={**h, "X-Model-Version": v1}
    )
    assert [_answered(r) for r in (by_path, by_header, path_wins)] == [v1, v1, v2]
    invoked = c.post(
        f"/models/{MODEL}/versions/{v1}/invocations", json={"instances": [ROW]}, headers=h
    )
    assert invoked.status_code == 200 and invoked.json()["predictions"] in (
        ["benign"],
        ["malignant"],
    )
    answered = {r["request_id"]: r["version"] for r in audit.tail(settings, 100)}
    assert [answered[r.json()["request_id"]] for r in (by_path, by_header, path_wins)] == [
        v1,
        v1,
        v2,
    ]
    assert c.app.state.components.holder.pinned() == {(MODEL, v1): "cached"}


def test_a_version_never_promoted_cannot_be_addressed(
    settings: Settings,
    versions: tuple[str, str, str],
    make_client: Callable[..., TestClient],
    predict_key: str,
) -> None:
    _, v2, v3 = versions
    c = make_client(model_source=None)
    h = bearer(predict_key)
    for r in (
        c.post(f"/models/{MODEL}/versions/{v3}/predict", json=ROW, headers=h),
        c.post("/predict", json=ROW, headers={**h, "X-Model-Version": v3}),
    ):
        assert r.status_code == 404, r.text
        assert f"{MODEL} v{v3} has no promotion record" in r.json()["detail"]
    for bad in ("99", "abc"):
        r = c.post(f"/models/{MODEL}/versions/{bad}/predict", json=ROW, headers=h)
        assert r.status_code == 404 and "no" in r.json()["detail"]
    assert _answered(c.post("/predict", json=ROW, headers=h)) == v2  # the champion is untouched


# --- the holder, on a fake source ---------------------------------------------------


class PinSource(FakeSource):
    """A fake registry that counts pinned loads, can hold them, and refuses ``unsigned``."""

    def __init__(self) -> None:
        super().__init__()
        self.pin_loads: list[str] = []
        self.release = threading.Event()
        self.release.set()
        self.unsigned: set[str] = set()

    def load_pinned(self, name: str, version: str) -> LoadedModel:
        self.pin_loads.append(version)
        assert self.release.wait(10)
        if version in self.unsigned:
            raise UnsignedVersionError(f"{name} v{version} has no promotion record")
        return self.load(name, version)


def _holder(source: PinSource, cache_size: int = 2) -> ModelHolder:
    holder = ModelHolder(source, lambda *a: None, [MODEL], cache_size=cache_size)
    assert holder.refresh(MODEL) == "loaded"  # champion v1
    return holder


def test_concurrent_requests_for_one_version_load_it_once() -> None:
    source = PinSource()
    holder = _holder(source)
    source.release.clear()
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(holder.load_version, MODEL, "5") for _ in range(6)]
        while not source.pin_loads:
            threading.Event().wait(0.01)
        source.release.set()
        served = {id(f.result(10)) for f in futures}
    assert source.pin_loads == ["5"] and len(served) == 1
    assert holder.get_version(MODEL, "1") is holder.get(MODEL)  # the champion is not reloaded

    source.unsigned.add("6")
    for _ in range(2):  # a refusal is not remembered as a model: asked again, refused again
        with pytest.raises(UnsignedVersionError):
            holder.load_version(MODEL, "6")
    assert source.pin_loads == ["5", "6", "6"]


def test_pinned_versions_stay_loaded_and_the_rest_are_a_bounded_cache() -> None:
    source = PinSource()
    holder = _holder(source, cache_size=2)
    holder.keep_pinned({MODEL: {"2", "3", "4"}, "not-served": {"9"}})
    for v in ("5", "6", "7"):
        holder.load_version(MODEL, v)
    assert holder.pinned() == {
        **dict.fromkeys([(MODEL, "2"), (MODEL, "3"), (MODEL, "4")], "kept"),
        **dict.fromkeys([(MODEL, "6"), (MODEL, "7")], "cached"),  # 5, least recent, evicted
    }
    kept = holder.get_version(MODEL, "2")
    source.champions[MODEL] = "8"
    assert holder.refresh(MODEL) == "swapped"
    assert holder.get_version(MODEL, "2") is kept  # a champion swap leaves pins alone

    holder.keep_pinned({MODEL: {"2"}})  # the keys pinning 3 and 4 were revoked
    assert holder.pinned()[(MODEL, "2")] == "kept"
    assert sorted(p for p, how in holder.pinned().items() if how == "cached") == [
        (MODEL, "3"),
        (MODEL, "4"),
    ]
    assert source.pin_loads == ["2", "3", "4", "5", "6", "7"]
