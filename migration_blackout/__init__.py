"""migration-blackout: how long a VM is really unreachable while it is live-migrated.

The repository keeps the project's rooms at its top level (``harness/``,
``probes/``, ``analysis/``, ``lab/``); this package gathers them under one
distinctive import name, so an installed wheel claims only
``migration_blackout`` (``migration_blackout.harness``, ...). In a checkout the
four entries here are symbolic links to those folders.
"""
