#!/bin/sh
# Installs the Debian packages that the BLE tests need, when they are missing.
# The tests run real bleak against a BlueZ mocked by python-dbusmock on a private D-Bus:
#   dbus                 dbus-daemon, the private system bus
#   libdbus-1-dev        headers to build dbus-python (python-dbusmock needs it; PyPI has
#   libglib2.0-dev       no wheels, so pip compiles it), together with a C compiler,
#   pkg-config           pkg-config and the Python headers
#   build-essential
#   python3-dev
# As root it uses apt-get; otherwise it names exactly what to install and fails.
# The pip side (python-dbusmock, dbus-python) comes with the project's dev extra.
set -e
PY="${PY:-python3}"

installed() {
    dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed
}

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "not a Debian system: install dbus-daemon, the libdbus-1 and glib-2.0 development" >&2
    echo "headers, pkg-config, a C compiler and the Python headers by hand" >&2
    exit 1
fi

missing=""
for pkg in dbus libdbus-1-dev libglib2.0-dev pkg-config; do
    installed "$pkg" || missing="$missing $pkg"
done
command -v cc >/dev/null 2>&1 || missing="$missing build-essential"
# Python.h of the interpreter that will build dbus-python (a venv shares its base's headers).
has_headers='import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'
if ! "$PY" -c "$has_headers" 2>/dev/null; then
    missing="$missing python3-dev"
fi

[ -z "$missing" ] && exit 0
if [ "$(id -u)" = "0" ]; then
    echo "installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
else
    echo "the BLE tests need these Debian packages:$missing" >&2
    echo "install them with: sudo apt-get install -y$missing" >&2
    exit 1
fi
