"""The harness: orchestration, the CLI, configuration and the remote-host client."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("migration-blackout")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
