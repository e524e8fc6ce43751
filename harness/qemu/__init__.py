"""QEMU over QMP, as the product drives it (a user's own QEMUs, or the QEMU lab's).

* ``qmp``: an asyncio QMP client (commands, typed results and errors, events
  with QEMU's timestamps).
* ``migration``: ``migrate()``, one migration with everything QEMU reports,
  cancel on timeout, optional RAM comparison.

``harness.backends.qemu`` runs a measured migration with them; the QEMU lab
(``lab.qemu``) uses the same client for its own QEMUs.
"""
