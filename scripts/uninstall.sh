#!/usr/bin/env bash
# Remove the pictl service installed by scripts/install.sh.
#
#   sudo scripts/uninstall.sh           # or: sudo make uninstall
#   sudo scripts/uninstall.sh --purge   # also the config, the state (audit log) and the user
#
# Stopping the service writes every output's safe level first. Safe to run again.
# DESTDIR=/some/dir works as for install.sh: files below it, system commands printed.
set -euo pipefail

SCRIPT=uninstall
# shellcheck source=scripts/common.sh
. "$(cd "$(dirname "$0")" && pwd)/common.sh"
PURGE=no
[ "${1:-}" = "--purge" ] && PURGE=yes

if [ -n "$DESTDIR" ] || systemctl cat pictl.service >/dev/null 2>&1; then
    system systemctl disable --now pictl.service
fi
rm -f "$DESTDIR$UNIT_PATH"
system systemctl daemon-reload
system systemctl reset-failed pictl.service 2>/dev/null || true
system rm -rf "$PREFIX"
if [ "$PURGE" = yes ]; then
    rm -rf "$DESTDIR$CONFIG_DIR"
    system rm -rf /var/lib/pictl
    if [ -n "$DESTDIR" ] || id "$USER_NAME" >/dev/null 2>&1; then
        system userdel "$USER_NAME"
    fi
    say "removed the service, $PREFIX, $CONFIG_DIR, /var/lib/pictl and the user"
else
    say "removed the service and $PREFIX; kept $CONFIG_DIR, /var/lib/pictl and the user (--purge removes them)"
fi
