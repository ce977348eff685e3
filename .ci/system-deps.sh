#!/bin/sh
# Installs the Debian packages the tests need, when they are missing, with one apt-get run:
#   mosquitto, mosquitto-clients  the real broker the end-to-end tests start (and mosquitto_passwd)
#   nats-server                   the clustered broker (JetStream, MQTT 3.1.1) of the scale test
#   tmux                          a real terminal for the staff console's key tests
#   openssl                       the command line that makes the TLS tests' CA and certificates
#   chromium, chromium-driver     the headless browser (and its WebDriver) of the board's browser test
#   dbus                          dbus-daemon: the private system bus of the BLE tests
#   libdbus-1-dev, libglib2.0-dev headers to build dbus-python (python-dbusmock needs it;
#   pkg-config, build-essential,  PyPI has no wheels, so pip compiles it)
#   python3-dev
# As root it uses apt-get; otherwise it names exactly what to install and fails.
# The pip side (python-dbusmock, dbus-python) comes with the project's dev extra.
set -e
PY="${PY:-python3}"

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "not a Debian system: install mosquitto and its clients, nats-server, chromium and chromedriver," >&2
    echo "dbus-daemon, the libdbus-1" >&2
    echo "and glib-2.0 development headers, pkg-config, a C compiler and the Python headers" >&2
    exit 1
fi

installed() {
    dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed
}

missing=""
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$missing mosquitto"
command -v mosquitto_sub >/dev/null 2>&1 || missing="$missing mosquitto-clients"
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing="$missing nats-server"
command -v tmux >/dev/null 2>&1 || missing="$missing tmux"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium-driver"
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
    echo "make test needs these Debian packages:$missing" >&2
    echo "install them with: sudo apt-get install -y$missing" >&2
    exit 1
fi
