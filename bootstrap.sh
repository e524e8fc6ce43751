#!/bin/sh
# Installs everything migration-blackout needs on a fresh Debian/Ubuntu machine:
# system packages when run as root, Python packages into ./.venv. Idempotent.
set -eu
cd "$(dirname "$0")"

SYSTEM_PACKAGES="python3 python3-venv python3-dev iproute2 procps fping xvfb nftables"
# The lab's domain controller (an MIT KDC on an OpenLDAP database, lab/kerberos.py),
# kinit/klist, and what the kerberos extra (python-gssapi, krb5) builds against.
SYSTEM_PACKAGES="$SYSTEM_PACKAGES krb5-kdc krb5-admin-server krb5-kdc-ldap krb5-user slapd ldap-utils"
SYSTEM_PACKAGES="$SYSTEM_PACKAGES faketime libkrb5-dev gcc"

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    missing=""
    for pkg in $SYSTEM_PACKAGES; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        echo "bootstrap: installing system packages:$missing"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
    fi
    # The QEMU lab: QEMU >= 8 (bookworm-backports on Debian 12), a Debian kernel,
    # the guest's initramfs. Idempotent; fast when nothing changed.
    sh lab/qemu/setup.sh
elif [ "$(id -u)" != 0 ]; then
    echo "bootstrap: not root, skipping system packages ($SYSTEM_PACKAGES)"
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "bootstrap: Python >= 3.11 is required, $PYTHON is $("$PYTHON" -V 2>&1)" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# The kerberos extra compiles python-gssapi against the system's libkrb5 (krb5-config).
extras=dev,lab,credssp,kerberos
if ! command -v krb5-config >/dev/null 2>&1; then
    extras=dev,lab,credssp
    echo "bootstrap: no krb5-config (Debian package libkrb5-dev): installing without the kerberos extra"
fi
stamp=.venv/.installed-$(cat pyproject.toml | cksum | cut -d' ' -f1)-$extras
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[$extras]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
