"""Headless Chromium for the browser tests: Debian's, never a downloaded one."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
# As root, offline: no sandbox, and none of Chromium's own calls home.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
