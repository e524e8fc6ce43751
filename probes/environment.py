"""The environment a child process gets: this one's, without secrets.

A password read from ``MEASURE_PASSWORD`` (or any variable a host names) is
meant for this process's connections only. Every process the tool starts,
the ICMP prober, a lab daemon and what the lab starts inside the guest, gets
an environment with every variable whose name looks like a secret removed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

SECRET_NAME_PARTS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "CREDENTIAL")


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return any(part in upper for part in SECRET_NAME_PARTS)


def child_environment(
    extra: Mapping[str, str] | None = None, *, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``base`` (default ``os.environ``) without secret-looking variables, plus ``extra``
    (which may carry a secret on purpose, such as the agent's token)."""
    source = os.environ if base is None else base
    environment = {key: value for key, value in source.items() if not is_secret_name(key)}
    environment.update(extra or {})
    return environment


def forget_secrets() -> list[str]:
    """Remove secret-looking variables from this process's own environment,
    once they were read: children started without an explicit environment
    (multiprocessing's, a library's) inherit none. Returns the names removed."""
    names = [name for name in os.environ if is_secret_name(name)]
    for name in names:
        del os.environ[name]
    return names
