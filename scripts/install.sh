#!/usr/bin/env bash
# Install pictl as a systemd service on Raspberry Pi OS (or any Debian with systemd).
#
#   sudo scripts/install.sh            # or: sudo make install
#
# Safe to run again (an upgrade): the user, groups and venv are reused, the package and the
# unit are replaced, and an existing /etc/pictl/config.toml is never touched.
#
# What it does:
#   1. a system user `pictl` (no shell, no login) in the groups gpio and dialout
#   2. a venv in /opt/pictl/venv (with the system's site packages, for apt's python3-lgpio),
#      and this source tree installed into it
#   3. /etc/systemd/system/pictl.service from systemd/pictl.service
#   4. /etc/pictl/config.toml from config/example-pi.toml, if absent, plus a token per role
#      (admin, panel): a random secret, printed once, whose hash alone goes into the config;
#      root-owned, readable by group pictl
#   5. systemctl daemon-reload, enable, and start (or restart, to run the new code)
#
# Sandbox: with DESTDIR=/some/dir every file goes below that directory, and the commands that
# change the system (useradd, apt-get, pip, chown, systemctl, ...) are printed, not run.
# The test suite uses that; it is also a way to see what an install would do.
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
SCRIPT=install
# shellcheck source=scripts/common.sh
. "$SRC/scripts/common.sh"
PYTHON="${PYTHON:-python3}"
CONFIG="$CONFIG_DIR/config.toml"
VENV="$PREFIX/venv"

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "pictl needs Python 3.11 or newer")'

# 1. user and groups. SupplementaryGroups= in the unit fails the start if a group is missing.
if command -v apt-get >/dev/null; then
    # python3-lgpio is Raspberry Pi OS's GPIO backend; plain Debian has no such package.
    packages="python3-venv"
    if apt-cache show python3-lgpio >/dev/null 2>&1; then packages="$packages python3-lgpio"; fi
    system apt-get install -y $packages
fi
for group in gpio dialout; do
    getent group "$group" >/dev/null || system groupadd --system "$group"
done
if ! id "$USER_NAME" >/dev/null 2>&1; then
    system useradd --system --user-group --home-dir /var/lib/pictl --no-create-home \
        --shell /usr/sbin/nologin --comment "pictl hardware-controller daemon" "$USER_NAME"
fi
system usermod --append --groups gpio,dialout "$USER_NAME"

# 2. the venv and the package (not editable: the service must not run from this checkout)
system mkdir -p "$PREFIX"
[ -x "$VENV/bin/python" ] || system "$PYTHON" -m venv --system-site-packages "$VENV"
system "$VENV/bin/python" -m pip install --quiet --upgrade "$SRC"
system install -m 0644 "$SRC/README.md" "$SRC/hardware.md" "$PREFIX/"

# 3. the unit, with ExecStart pointing at this venv
install -d -m 0755 "$DESTDIR/etc/systemd/system"
sed "s|/opt/pictl/venv/bin/pictl|$VENV/bin/pictl|" "$SRC/systemd/pictl.service" > "$DESTDIR$UNIT_PATH.new"
chmod 0644 "$DESTDIR$UNIT_PATH.new"
mv "$DESTDIR$UNIT_PATH.new" "$DESTDIR$UNIT_PATH"
say "unit installed: $UNIT_PATH"

# 4. the config, only when there is none: never overwrite what the site has edited.
# Root-owned, group pictl may read it (the daemon re-reads it on reload), nobody else.
install -d -m 0755 "$DESTDIR$CONFIG_DIR"
if [ -e "$DESTDIR$CONFIG" ]; then
    say "kept the existing $CONFIG"
else
    tokens=""
    umask 077
    cp "$SRC/config/example-pi.toml" "$DESTDIR$CONFIG.new"
    for role in admin panel; do
        # `pictl token create` needs only the standard library: run it from this tree.
        { printf '\n'; PYTHONPATH="$SRC" "$PYTHON" -m controller.service.cli token create "$role" --role "$role" \
            2>"$DESTDIR$CONFIG.secret"; } >> "$DESTDIR$CONFIG.new"
        tokens="$tokens  $role: $(sed 's/.*: //' "$DESTDIR$CONFIG.secret")"$'\n'
        rm -f "$DESTDIR$CONFIG.secret"
    done
    chmod 0640 "$DESTDIR$CONFIG.new"
    system chown "root:$USER_NAME" "$DESTDIR$CONFIG.new"
    mv "$DESTDIR$CONFIG.new" "$DESTDIR$CONFIG"
    say "wrote $CONFIG from config/example-pi.toml; edit it for your wiring (hardware.md)"
    say "tokens created (shown only now; the config holds only their hashes):"
    printf '%s' "$tokens"
fi
system "$VENV/bin/pictl" check-config "$CONFIG"

# 5. enable and (re)start
system systemctl daemon-reload
system systemctl enable pictl.service
if [ -z "$DESTDIR" ] && systemctl is-active --quiet pictl.service; then
    system systemctl restart pictl.service  # run the code just installed
else
    system systemctl start pictl.service
fi
say "done: systemctl status pictl; journalctl -u pictl -f"
