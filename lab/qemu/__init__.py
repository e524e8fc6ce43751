"""The QEMU lab: a tiny Linux guest live-migrated between two QEMU processes.

Modules (docs/qemu.md has the whole story):

* ``setup.sh``: packages (QEMU >= 8 from bookworm-backports on Debian 12,
  busybox-static), the Debian kernel, the guest programs and initramfs;
  ``artefacts`` reads what it built.
* ``network``: namespace, bridge, taps and the veth to the root namespace.
* ``lab``: ``QemuLab``, the two QEMUs and the ping-pong invariant (a running
  guest, a standby destination).
* ``guest``: the guest's control channel (memory dirtier, status).
* ``daemon`` / ``control``: the lab as a background process, for
  ``measure lab up/status/down --hypervisor qemu``.

The QMP client and the migration driver are the product's
(``harness.qemu.qmp``, ``harness.qemu.migration``): they drive a user's own
QEMUs too.
"""
