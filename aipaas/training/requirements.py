"""The pip requirements logged with a model: what loading it needs, pinned.

MLflow infers them by default by loading the model in a new Python process
and listing every package that process imported: 7 s per training on this
machine (a third of a small training's fixed cost), and the list it wrote
for a LightGBM classifier included pytest and rich. Here they come from the
classes the model is made of (a scikit-learn pipeline's steps too, through
``get_params(deep=True)``), mapped to the installed distributions that
provide them, plus what every loader needs (mlflow, numpy, pandas) and the
serialisation format's package (skops). Versions are this environment's:
the one the model was trained and checked in.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from functools import cache
from typing import Any

# Every model is loaded through MLflow's pyfunc, which hands it pandas frames.
ALWAYS = ("mlflow", "numpy", "pandas")
# A package that needs another at load time but does not import it at class level.
NEEDS = {"scikit-learn": ("scipy",), "lightgbm": ("scikit-learn", "scipy")}
# Distributions a model's class may come from that are not loadable requirements:
# the platform itself (a class from ``models/`` must be a trusted library type to
# be logged at all: skops refuses others).
NOT_REQUIREMENTS = frozenset({"aipaas"})


def pip_requirements(model: Any, *, skops: bool = False) -> list[str]:
    """``name==version`` for every distribution loading ``model`` needs, sorted."""
    names = set(ALWAYS)
    modules = _distributions()
    for part in _parts(model):
        top = type(part).__module__.partition(".")[0]
        names.update(d for d in modules.get(top, ()) if d not in NOT_REQUIREMENTS)
    if skops:
        names.add("skops")
    for name in list(names):
        names.update(NEEDS.get(name, ()))
    return sorted(f"{name}=={_version(name)}" for name in names if _version(name))


def _parts(model: Any) -> Iterator[Any]:
    """The model and every estimator or transformer nested in it."""
    yield model
    get_params = getattr(model, "get_params", None)
    if get_params is None:
        return
    try:
        params = get_params(deep=True)
    except TypeError:  # a get_params without ``deep``: not scikit-learn's protocol
        return
    for value in params.values():
        if hasattr(value, "fit") or hasattr(value, "transform"):
            yield value


@cache
def _distributions() -> dict[str, list[str]]:
    """Top-level import name -> the distributions that provide it (read once)."""
    return {k: list(v) for k, v in importlib.metadata.packages_distributions().items()}


@cache
def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
