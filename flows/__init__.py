"""Prefect flows: thin tables of contents over the core in ``aipaas/``.

One module per flow (data, train, promote, lifecycle, drift, retrain) and
``deployments.py``, which serves them all with their schedules.
"""
