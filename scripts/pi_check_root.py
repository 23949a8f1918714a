"""The emulated Raspberry Pi OS root of scripts/pi_check.py (stdlib only; run as root).

A Debian bookworm root of the Pi's architecture (Pi OS bookworm is Debian 12 with Python 3.11.2),
made with debootstrap and run through qemu-user-static registered with binfmt_misc. The root is
built once per recipe into a cache outside the repository and never changed afterwards: each check
runs in an overlay on top of it (its changes are thrown away) with /proc, /sys and /dev mounted,
all unmounted on the way out whatever happened. And the host's pip settings, found for the root:
its configuration files, its PIP_* environment and the local paths they name.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import suppress
from pathlib import Path

QEMU = {"arm64": "aarch64", "armhf": "arm"}  # Debian architecture -> qemu-user name
SUITE = "bookworm"
INCLUDE = ("python3", "python3-venv", "python3-pip", "ca-certificates")  # and nothing that compiles
RECIPE_VERSION = 1  # bump when the way the root is made changes
DEBIAN_SUITES = {"bullseye", "bookworm", "trixie", "forky", "sid", "stable", "testing", "unstable"}
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOME = "/home/pi"  # the Pi user's home in the root


class RootError(Exception):
    """Something the check needs from the host is missing or failed (one line, said plainly)."""


def host_mirror() -> str:
    """The Debian mirror of the host's apt sources (one-line and deb822 formats)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
                if "deb" in fields.get("Types", "").split() and DEBIAN_SUITES & set(fields.get("Suites", "").split()):
                    for uri in fields.get("URIs", "").split():
                        if "security" not in uri:
                            return uri
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] in DEBIAN_SUITES and "security" not in words[1]:
                    return words[1]
    return "http://deb.debian.org/debian"


def ensure_binfmt(arch: str) -> str:
    """Register qemu-user for *arch* with binfmt_misc; returns the registration as the kernel has it."""
    qemu = QEMU[arch]
    if not shutil.which(f"qemu-{qemu}-static") or not shutil.which("update-binfmts"):
        raise RootError("needs qemu-user-static and binfmt-support: apt-get install qemu-user-static binfmt-support")
    misc = Path("/proc/sys/fs/binfmt_misc")
    if not (misc / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(misc)], check=True)
    entry = misc / f"qemu-{qemu}"
    if not entry.exists() or entry.read_text().splitlines()[0] != "enabled":
        subprocess.run(["update-binfmts", "--enable", f"qemu-{qemu}"], check=True, capture_output=True)
    text = entry.read_text() if entry.exists() else ""
    flags = re.search(r"^flags: (\S*)", text, re.M)
    if not text.startswith("enabled") or not flags or "F" not in flags.group(1):
        raise RootError(f"binfmt_misc has no enabled qemu-{qemu} with the F flag (fix-binary): {text!r}")
    return f"qemu-{qemu} enabled, flags {flags.group(1)}"


def recipe(arch: str, mirror: str) -> dict[str, object]:
    return {"version": RECIPE_VERSION, "arch": arch, "suite": SUITE, "variant": "minbase",
            "include": list(INCLUDE), "mirror": mirror}


def ensure_root(cache: Path, arch: str, mirror: str, log: Path) -> tuple[Path, str]:
    """The cached root for this recipe, built if missing or made by another recipe.

    Built into a fresh directory and renamed into place only when complete, so an interrupted
    build is never taken for a root. Returns the root and what was done."""
    want = recipe(arch, mirror)
    digest = hashlib.sha256(json.dumps(want, sort_keys=True).encode()).hexdigest()[:12]
    base = cache / arch
    root, stamp = base / "root", base / "recipe.json"
    if root.is_dir() and stamp.is_file() and json.loads(stamp.read_text()).get("digest") == digest:
        return root, f"cached root reused (recipe {digest}, {du_mib(root)} MiB)"
    if not shutil.which("debootstrap"):
        raise RootError("needs debootstrap: apt-get install debootstrap")
    base.mkdir(parents=True, exist_ok=True)
    new = base / "root.new"
    for stale in (new, root):
        if stale.exists():
            shutil.rmtree(stale)
    stamp.unlink(missing_ok=True)
    argv = ["debootstrap", f"--arch={arch}", "--variant=minbase", "--include=" + ",".join(INCLUDE), SUITE,
            str(new), mirror]
    if run_logged(argv, log, timeout=45 * 60) != 0:
        raise RootError(f"debootstrap failed (log: {log}): {tail(log)}")
    new.rename(root)
    stamp.write_text(json.dumps({"digest": digest, "recipe": want, "built": time.strftime("%Y-%m-%d %H:%M")}))
    return root, f"root built with debootstrap (recipe {digest}, {du_mib(root)} MiB, from {mirror})"


def du_mib(path: Path) -> int:
    out = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=False).stdout
    return int(out.split()[0]) if out else 0


def tail(log: Path, lines: int = 15) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def run_logged(argv: Sequence[str], log: Path, *, timeout: float, echo: bool = False,
               env: dict[str, str] | None = None, cwd: str | None = None) -> int:
    """Run *argv* in its own process group, output to *log* (and the console when *echo*).

    The whole group is killed at *timeout*; the exit code is then 124, as timeout(1) says."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=cwd, text=True, errors="replace")
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, expire)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                if echo:
                    print("     " + line, end="", flush=True)
            code = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if expired.is_set():
            out.write(f"\n[killed after {timeout:.0f} s]\n")
            return 124
        return code


class Session:
    """One check's view of the root: an overlay on the cached root, with /proc, /sys, /dev mounted."""

    def __init__(self, base: Path, work: Path) -> None:
        self.base = base  # the cached root (the overlay's lower layer: never written)
        self.work = work  # upper/, work/ and merged/ of this run
        self.root = work / "merged"
        self.mounts: list[Path] = []  # in mount order; unmounted in reverse

    def __enter__(self) -> Session:
        try:
            self.unmount_leftovers()  # a run killed before its cleanup (SIGKILL) left its mounts
            if self.work.exists():
                shutil.rmtree(self.work)
            for name in ("upper", "work", "merged"):
                (self.work / name).mkdir(parents=True)
            self._mount(self.root, "-t", "overlay", "overlay", "-o",
                        f"lowerdir={self.base},upperdir={self.work / 'upper'},workdir={self.work / 'work'}")
            self._mount(self.root / "proc", "-t", "proc", "proc")
            self._mount(self.root / "sys", "--bind", "-o", "ro", "/sys")
            self._mount(self.root / "dev", "--bind", "/dev")
            self._mount(self.root / "dev/pts", "--bind", "/dev/pts")
            self._mount(self.root / "dev/shm", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _mount(self, target: Path, *how: str) -> None:
        """``mount HOW... TARGET`` (the source, if any, is the last word of *how*)."""
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *how, str(target)], check=True, capture_output=True)
        self.mounts.append(target)

    def bind_readonly(self, path: Path) -> None:
        """The host's *path* (a file or a directory) at the same place in the root, read-only."""
        target = self.root / path.relative_to("/")
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        self._mount(target, "--bind", "-o", "ro", str(path))

    def unmount_leftovers(self) -> None:
        """Unmount what an earlier run left mounted under this run's directory, deepest first."""
        with open("/proc/self/mounts") as mounts:
            targets = [line.split()[1].replace("\\040", " ") for line in mounts]
        inside = [t for t in targets if Path(t) == self.work or self.work in Path(t).parents]
        for target in sorted(set(inside), key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)

    def close(self) -> None:
        """Stop whatever still runs in the root, unmount everything, drop the overlay's layers."""
        self.kill_leftovers()
        for target in reversed(self.mounts):
            if subprocess.run(["umount", str(target)], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)
        self.mounts.clear()
        if self.work.exists() and not self.root_is_mounted():
            shutil.rmtree(self.work, ignore_errors=True)

    def root_is_mounted(self) -> bool:
        return any(line.split()[1] == str(self.root) for line in Path("/proc/mounts").read_text().splitlines())

    def processes(self) -> Iterator[int]:
        """Ids of the processes whose root directory is this session's root (ours: we started them)."""
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with suppress(OSError):
                    if os.readlink(entry / "root") == str(self.root):
                        yield int(entry.name)

    def kill_leftovers(self) -> None:
        for pid in self.processes():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(True for _ in self.processes()):
            time.sleep(0.1)

    def user_ids(self, user: str) -> tuple[int, int]:
        for line in (self.root / "etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return int(fields[2]), int(fields[3])
        raise RootError(f"no user {user} in the root")

    def run(self, argv: Sequence[str], log: Path, *, user: str = "root", cwd: str = "/", timeout: float,
            env: dict[str, str] | None = None, echo: bool = False) -> int:
        """*argv* inside the root as *user* with a clean environment plus *env*."""
        home = "/root" if user == "root" else f"/home/{user}"
        uid, gid = self.user_ids(user)
        clean = {"PATH": PATH, "HOME": home, "USER": user, "LOGNAME": user, "LANG": "C.UTF-8", **(env or {})}
        chroot = ["chroot", f"--userspec={uid}:{gid}", f"--groups={gid}", str(self.root), "/usr/bin/env", "-i",
                  *(f"{k}={v}" for k, v in clean.items()), "/bin/sh", "-c", 'cd "$0" && exec "$@"', cwd, *argv]
        return run_logged(chroot, log, timeout=timeout, echo=echo, env={"PATH": PATH})


# -- the host's pip settings, for the Pi user's pip in the root ---------------------------------
def pip_config_files() -> list[tuple[Path, str]]:
    """(host file, where the Pi user's pip finds it in the root): every pip configuration file."""
    files: list[tuple[Path, str]] = []
    for path in [Path("/etc/pip.conf"), *sorted(Path("/etc/xdg/pip").glob("*"))]:
        if path.is_file():
            files.append((path, str(path)))
    for user in (Path.home() / ".config/pip", Path.home() / ".pip"):
        for path in sorted(user.glob("*")):
            if path.is_file():
                files.append((path, f"{HOME}/{path.relative_to(Path.home())}"))
    if (named := os.environ.get("PIP_CONFIG_FILE")) and Path(named).is_file():
        files.append((Path(named), named))
    return files


def pip_environment() -> dict[str, str]:
    """The host's PIP_* environment, its proxies and its CA settings, for the Pi user's pip.

    Not CI: under CI the suite fails, rather than skips, a test whose tool is missing, and the root
    has none of them (see TOOL_SKIP)."""
    keep = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
            "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")
    return {k: v for k, v in os.environ.items() if k.startswith("PIP_") or k in keep}


def local_paths(files: list[tuple[Path, str]], env: dict[str, str]) -> set[Path]:
    """Host paths named by pip's settings (find-links, file:// indexes, constraints, certificates)."""
    values = list(env.values())
    for path, _ in files:
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except configparser.Error:
            continue
        values += [v for section in parser.sections() for v in parser[section].values()]
    found = set()
    for word in " ".join(values).split():
        path = Path(word.removeprefix("file://"))
        if word.startswith("file://") and path.name == "simple":
            path = path.parent  # a file index's pages link to files beside it (../../files/...)
        if path.is_absolute() and path.exists():
            found.add(path)
    return found
