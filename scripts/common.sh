# Shared by install.sh and uninstall.sh (sourced, not run). Set SCRIPT to the caller's name first.
DESTDIR="${DESTDIR:-}"
PREFIX="${PICTL_PREFIX:-/opt/pictl}"
USER_NAME=pictl
UNIT_PATH=/etc/systemd/system/pictl.service
CONFIG_DIR=/etc/pictl

say() { printf 'pictl %s: %s\n' "$SCRIPT" "$*"; }

# Commands that change the system outside DESTDIR: printed in the sandbox, run otherwise.
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
    echo "pictl $SCRIPT: run as root (sudo $0), or set DESTDIR=/some/dir to try it in a sandbox" >&2
    exit 1
fi
