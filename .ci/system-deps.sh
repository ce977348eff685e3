#!/bin/sh
# Installs the Debian packages that the real-parts tests need, when they are missing.
# As root it uses apt-get; otherwise it names exactly what to install and fails.
set -e
missing=""
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$missing mosquitto"
command -v mosquitto_sub >/dev/null 2>&1 || missing="$missing mosquitto-clients"
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
