"""Loopback ports for the servers tests start."""

from __future__ import annotations

from aipaas.ops.net import free_port

__all__ = ["free_port"]
