"""Shared pytest configuration.

Tests marked ``root`` need root (network namespaces, raw ICMP sockets,
sysctls inside a namespace). They are skipped elsewhere with a reason that
says so; CI runs as root, so CI skips nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

IS_ROOT = os.geteuid() == 0


def pytest_configure(config: pytest.Config) -> None:
    """Kerberos only where a test says so: the machine's /etc/krb5.conf may name
    real KDCs (Debian's krb5-config writes one for ATHENA.MIT.EDU), and a
    Negotiate client tries Kerberos whenever python-gssapi is installed. Unless
    the environment already names one, every test (and what it starts) gets a
    krb5.conf without realms or DNS lookups; a test with a realm sets its own."""
    if "KRB5_CONFIG" in os.environ:
        return
    folder = Path(tempfile.mkdtemp(prefix="mb-tests-krb5-"))
    (folder / "krb5.conf").write_text(
        "[libdefaults]\n    dns_lookup_kdc = false\n    dns_lookup_realm = false\n"
        "    dns_canonicalize_hostname = false\n    rdns = false\n"
    )
    os.environ["KRB5_CONFIG"] = str(folder / "krb5.conf")
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


# Guest namespaces, blackout injector, sysctl helpers (tests/fixtures_netns.py); the
# user's workflow and runs of every kind, made once per session (tests/fixtures_workflow.py);
# a small disk that fills up (tests/fixtures_disk.py); measure run in-process and what it
# may not leave behind (tests/inprocess_run.py).
pytest_plugins = ["fixtures_netns", "inprocess_run", "fixtures_workflow", "fixtures_disk"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip_root = pytest.mark.skip(reason="needs root (network namespaces and raw ICMP sockets)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip_root)
