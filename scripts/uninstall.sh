#!/usr/bin/env bash
# Remove the pictl service installed by scripts/install.sh.
#
#   sudo scripts/uninstall.sh           # or: sudo make uninstall
#   sudo scripts/uninstall.sh --purge   # also the config, the state (audit log) and the user
#
# Stopping the service writes every output's safe level first. Safe to run again.
# DESTDIR=/some/dir works as for install.sh: files below it, system commands printed.
set -euo pipefail

DESTDIR="${DESTDIR:-}"
PREFIX="${PICTL_PREFIX:-/opt/pictl}"
UNIT_PATH=/etc/systemd/system/pictl.service
PURGE=no
[ "${1:-}" = "--purge" ] && PURGE=yes

system() {
    if [ -n "$DESTDIR" ]; then
        printf 'would run:'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
    echo "pictl uninstall: run as root (sudo $0)" >&2
    exit 1
fi

if [ -n "$DESTDIR" ] || systemctl cat pictl.service >/dev/null 2>&1; then
    system systemctl disable --now pictl.service
fi
rm -f "$DESTDIR$UNIT_PATH"
system systemctl daemon-reload
system systemctl reset-failed pictl.service 2>/dev/null || true
system rm -rf "$PREFIX"
if [ "$PURGE" = yes ]; then
    rm -rf "$DESTDIR/etc/pictl"
    system rm -rf /var/lib/pictl
    if [ -n "$DESTDIR" ] || id pictl >/dev/null 2>&1; then
        system userdel pictl
    fi
    echo "pictl uninstall: removed the service, /opt/pictl, /etc/pictl, /var/lib/pictl and the user"
else
    echo "pictl uninstall: removed the service and $PREFIX; kept /etc/pictl, /var/lib/pictl and the user (--purge removes them)"
fi
