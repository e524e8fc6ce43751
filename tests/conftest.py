"""Shared pytest configuration.

Tests marked ``root`` need root (network namespaces, raw ICMP sockets,
sysctls inside a namespace). They are skipped elsewhere with a reason that
says so; CI runs as root, so CI skips nothing.
"""

from __future__ import annotations

import os

import pytest

IS_ROOT = os.geteuid() == 0

# Guest namespaces, blackout injector, sysctl helpers (tests/fixtures_netns.py); the
# user's workflow and runs of every kind, made once per session (tests/fixtures_workflow.py);
# a small disk that fills up (tests/fixtures_disk.py).
pytest_plugins = ["fixtures_netns", "fixtures_workflow", "fixtures_disk"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip_root = pytest.mark.skip(reason="needs root (network namespaces and raw ICMP sockets)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip_root)
