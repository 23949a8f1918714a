"""pictl on the Pi's own operating system, by emulation: ``make pi-check [ARCH=arm64|armhf]``.

    sudo python3 scripts/pi_check.py [--arch arm64|armhf] [--cache /var/cache/pictl-pi-check] [--compare]

In a Debian bookworm root of the Pi's architecture (what Raspberry Pi OS bookworm is; see
scripts/pi_check_root.py) it installs the wheel this repository builds as a Pi user would: a venv,
``pip install pictl-*.whl``, then each extra and lgpio, with the host's pip configuration, PIP_*
environment and CA certificates, and no compiler in the root (a dependency that needs one fails
here, and that is a finding). Then, in the root: the README's quick start against the demo plant
(scripts/pi_check_demo.py), the config without --simulate on a machine without GPIO, and the
core tests (every test file except those in scripts/pi_check_ignore.txt, against the installed
wheel). The same install and quick start run on the host for comparison (--compare: the core tests
too). Prints what it proved and how long each step took; exits 1 on any failure. Needs root,
debootstrap, qemu-user-static and binfmt-support.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pi_check_root import (
    HOME,
    PATH,
    QEMU,
    RootError,
    Session,
    ensure_binfmt,
    ensure_root,
    host_mirror,
    local_paths,
    pip_config_files,
    pip_environment,
    run_logged,
)

REPO = Path(__file__).resolve().parent.parent
IGNORE = Path(__file__).with_name("pi_check_ignore.txt")
NOT_COPIED = ("controller/", "drivers/")  # the tests import the installed wheel, not the source
TOOLS_NOT_NEEDED = {"playwright"}  # the test extra's browser driver: only the panel tests use it
# Extras that cannot install without a compiler on an architecture (README.md says so and what to do):
# pi-check checks that they still cannot, and fails when one can (time to update the README).
NEEDS_A_COMPILER = {("armhf", "wamp")}
# A core test may skip only for want of one of these (the root has none of them; CI's own run has them all).
TOOL_SKIP = re.compile(r"playwright|chromium|mosquitto|crossbar|router|nginx|haproxy|prometheus|promtool|"
                       r"systemd-analyze|cannot install on \w+ without a compiler", re.I)  # the last: pi_check_plugin
LIBRARY = {"mqtt": "aiomqtt", "wamp": "autobahn"}  # each extra's library: what installing it must make importable
WORKERS = 4  # pytest-xdist workers for the tests not marked alone, as `make test` has them
RERUN_AT_MOST = 5  # more failures than this in one run is not timing: no second chance
TEST_TIMEOUT_S = 300  # pytest-timeout per test in the root (pyproject's 60 s, times the emulation's slowness)


class StepFailed(Exception):
    """A step's check failed: the message says what and where the log is."""


class Report:
    """Each step's duration, the figures of both places side by side, and what was proved."""

    ROWS = (  # figure key, label, unit
        ("install", "install: venv + pip install the wheel", "s"),
        ("extra-mqtt", "pip install pictl[mqtt]", "s"),
        ("extra-wamp", "pip install pictl[wamp]", "s"),
        ("lgpio", "pip install lgpio", "s"),
        ("demo-start_to_ready_s", "serve --simulate: start to READY=1", "s"),
        ("demo-door_open_call_s", "pictl call door.open (0.3 s of travel)", "s"),
        ("demo-rss_ready_mib", "RSS when ready", "MiB"),
        ("demo-rss_idle_mib", "RSS idle after the quick start", "MiB"),
        ("demo-no_gpio_exit_s", "no GPIO: serve without --simulate exits", "s"),
        ("tests", "core tests (pytest's own time)", "s"),
    )

    def __init__(self, arch: str, logs: Path) -> None:
        self.arch, self.logs = arch, logs
        self.steps: list[tuple[str, float]] = []
        self.proved: list[str] = []
        self.findings: list[str] = []
        self.started = time.perf_counter()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"--> {name}", flush=True)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.steps.append((name, time.perf_counter() - t0))
            print(f"<-- {name}: {self.steps[-1][1]:.1f} s", flush=True)

    def prove(self, what: str) -> None:
        self.proved.append(what)
        print(f"    ok: {what}", flush=True)

    def print(self, failure: str | None, emulated: dict[str, float], x86: dict[str, float]) -> None:
        print(f"\npi-check {self.arch}: Debian bookworm {self.arch} under qemu-{QEMU[self.arch]}-static. EMULATED: "
              "a real Pi's CPU runs 5-10x faster than this emulation; x86 = this host in the same run.")
        print(f"\n{'step':<50}{'seconds':>10}")
        for name, seconds in self.steps:
            print(f"{name:<50}{seconds:>10.1f}")
        print(f"{'total':<50}{time.perf_counter() - self.started:>10.1f}")
        print(f"\n{'figure':<50}{self.arch + ' (emulated)':>18}{'x86':>10}{'ratio':>8}")
        for key, label, unit in self.ROWS:
            if key in emulated or key in x86:
                a, b = emulated.get(key), x86.get(key)
                cells = [f"{v:.2f} {unit}" if v is not None else "-" for v in (a, b)]
                ratio = f"{a / b:.1f}x" if a and b else ""
                print(f"{label:<50}{cells[0]:>18}{cells[1]:>10}{ratio:>8}")
        print("\nproved:" if self.proved else "\nproved nothing")
        for what in self.proved:
            print(f"  - {what}")
        for finding in self.findings:
            print(f"  ! {finding}")
        print(f"logs: {self.logs}")
        print(f"\npi-check {self.arch} FAILED: {failure}" if failure else f"\npi-check {self.arch} passed")


def bring_pip_settings(s: Session, report: Report) -> dict[str, str]:
    """The host's pip configuration and CA certificates into the root; returns the environment to pass."""
    files, env = pip_config_files(), pip_environment()
    for host, inside in files:
        target = s.root / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(host, target)
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    shutil.copy2(bundle, s.root / "etc/ssl/certs/ca-certificates.crt")  # Debian's CAs plus the host's own
    for name in ("etc/resolv.conf", "etc/hosts"):
        (s.root / name).unlink(missing_ok=True)
        shutil.copy2(Path("/") / name, s.root / name)
    bound = sorted(p for p in local_paths(files, env) if not (s.root / p.relative_to("/")).exists())
    for path in bound:
        s.bind_readonly(path)
    report.prove(f"the root's pip sees the host's configuration ({', '.join(i for _, i in files) or 'none'}), "
                 f"its PIP_* environment ({', '.join(k for k in env if k.startswith('PIP_')) or 'none'}) and its "
                 f"CA bundle" + (f"; read-only: {', '.join(map(str, bound))}" if bound else ""))
    return env


def copy_tree(dest: Path, owner: tuple[int, int] | None = None, *, skip: tuple[str, ...] = NOT_COPIED) -> None:
    """The repository's tracked files (as they are in the work tree), minus *skip*, into *dest*."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in names.decode().split("\0"):
        source = REPO / name
        if name and not name.startswith(skip) and source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    if owner is not None:
        for path in [dest, *dest.rglob("*")]:
            os.chown(path, *owner)


def pip_findings(log: Path) -> tuple[list[str], list[str]]:
    """(packages pip built from source, platform wheels it downloaded) from a pip log."""
    text = log.read_text(errors="replace")
    built = sorted(set(re.findall(r"Building wheel for (\S+)", text)))
    wheels = sorted({w for w in re.findall(r"Downloading (\S+\.whl)", text) if not w.endswith("-none-any.whl")})
    return built, [w.rsplit("/", 1)[-1] for w in wheels]


def core_test_args(arch: str) -> list[str]:
    """pytest's arguments for the core tests on *arch* (scripts/pi_check_ignore.txt), every entry checked."""
    args = []
    for line in IGNORE.read_text().splitlines():
        entry = line.split("#")[0].strip()
        only, entry = m.groups() if (m := re.match(r"^(\w+):\s+(.*)$", entry)) else ("", entry)
        if only and only not in QEMU:
            raise StepFailed(f"{IGNORE.name}: {line.strip()}: {only} is not one of {', '.join(QEMU)}")
        if not entry:
            continue
        file, _, test = entry.partition("::")
        path = REPO / file
        if not path.is_file() or (test and not re.search(rf"def {re.escape(test)}\b", path.read_text())):
            raise StepFailed(f"{IGNORE.name}: {entry} names no test file or test (remove or fix the entry)")
        if not only or only == arch:
            args.append(f"--deselect={entry}" if test else f"--ignore={file}")
    return args


def test_tools() -> list[str]:
    """The test extra's tools the core tests need (the bridges' libraries come with the extras)."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    libraries = {re.split(r"[<>=!~\[ ;]", r)[0] for extra in ("mqtt", "wamp") for r in meta[extra]}
    return [r for r in meta["test"] if re.split(r"[<>=!~\[ ;]", r)[0] not in libraries | TOOLS_NOT_NEEDED]


def pytest_summary(log: Path) -> dict[str, float]:
    """Counts and seconds from pytest's last line ("700 passed, 2 skipped in 123.18s")."""
    last = [line for line in log.read_text(errors="replace").splitlines() if re.search(r" in [\d.]+s", line)]
    if not last:
        return {}
    counts = {k: float(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", last[-1])}
    counts["seconds"] = float(re.findall(r" in ([\d.]+)s", last[-1])[-1])
    return counts


class Place:
    """Where the steps run: the emulated root (as user pi) or this host (the x86 figures)."""

    def __init__(self, name: str, arch: str, home: str, logs: Path, session: Session | None,
                 env: dict[str, str]) -> None:
        self.name, self.arch, self.home, self.logs, self.session, self.env = name, arch, home, logs, session, env
        self.wheel = ""  # the wheel's path, as seen from here
        self.pip = f"{home}/venv/bin/pip"
        self.python = f"{home}/venv/bin/python"

    def attempt(self, log: str, *argv: str, timeout: float, cwd: str | None = None, echo: bool = False,
                env: dict[str, str] | None = None) -> tuple[int, Path]:
        """Run *argv* (with *env* added); returns its exit code and its log, LOGS/NAME-LOG.log."""
        path = self.logs / f"{self.name}-{log}.log"
        cwd = cwd or self.home
        fresh = {"PIP_NO_CACHE_DIR": "1", **(env or {})}  # every install downloads, as on a new Pi: both alike
        if self.session is not None:
            code = self.session.run(argv, path, user="pi", cwd=cwd, timeout=timeout, env={**self.env, **fresh},
                                    echo=echo)
        else:
            env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
            code = run_logged(argv, path, timeout=timeout, echo=echo, cwd=cwd, env={**env, **fresh, "PATH": PATH})
        return code, path

    def run(self, log: str, *argv: str, timeout: float, cwd: str | None = None, echo: bool = False) -> Path:
        """Run *argv*; returns its log; raises StepFailed when it fails."""
        code, path = self.attempt(log, *argv, timeout=timeout, cwd=cwd, echo=echo)
        if code != 0:
            tail = "\n".join(path.read_text(errors="replace").splitlines()[-12:])
            raise StepFailed(f"{self.name}: {' '.join(argv[:4])}... exited {code} (log {path}):\n{tail}")
        return path


def install(place: Place, report: Report) -> float:
    t0 = time.perf_counter()
    place.run("venv", "python3", "-m", "venv", f"{place.home}/venv", timeout=600)
    log = place.run("install", place.pip, "install", place.wheel, timeout=1800)
    seconds = time.perf_counter() - t0
    built, wheels = pip_findings(log)
    if built:
        report.findings.append(f"{place.name}: pip built from source: {', '.join(built)}")
    report.prove(f"{place.name}: `pip install {Path(place.wheel).name}` in a fresh venv in {seconds:.0f} s, "
                 f"built nothing from source" if not built else f"{place.name}: installed (built {built})")
    if wheels:
        print(f"     platform wheels: {', '.join(wheels)}")
    return seconds


def extra(place: Place, report: Report, name: str, module: str) -> float:
    t0 = time.perf_counter()
    if (place.arch, name) in NEEDS_A_COMPILER:
        return needs_a_compiler(place, report, name)
    log = place.run(f"extra-{name}", place.pip, "install", f"{place.wheel}[{name}]", timeout=1800)
    place.run(f"import-{name}", place.python, "-c", f"import {module}", timeout=300)
    seconds = time.perf_counter() - t0
    built, wheels = pip_findings(log)
    if built:
        report.findings.append(f"{place.name}: pictl[{name}] built from source: {', '.join(built)}")
    report.prove(f"{place.name}: pictl[{name}] installed and `import {module}` works, {seconds:.0f} s"
                 + (f" (built from source: {', '.join(built)})" if built else ", nothing built from source"))
    if wheels:
        print(f"     platform wheels: {', '.join(wheels)}")
    return seconds


def needs_a_compiler(place: Place, report: Report, name: str) -> float:
    """An extra the README says cannot install on this architecture without a compiler: check it still cannot."""
    t0 = time.perf_counter()
    code, log = place.attempt(f"extra-{name}", place.pip, "install", f"{place.wheel}[{name}]", timeout=1800)
    seconds = time.perf_counter() - t0
    if code == 0:
        raise StepFailed(f"pictl[{name}] now installs on {place.arch} without a compiler: update README.md "
                         f"(\"32-bit Pi OS\") and NEEDS_A_COMPILER in {Path(__file__).name}")
    text = log.read_text(errors="replace")
    failed = re.findall(r"Failed to build (.+)", text) or re.findall(r"Could not build wheels for (.+?),? which", text)
    if not failed:
        raise StepFailed(f"pictl[{name}] failed on {place.arch}, but not for want of a compiler (log {log})")
    report.findings.append(f"{place.name}: pictl[{name}] cannot install on {place.arch} without a compiler, as "
                           f"README.md says: pip had to build {failed[-1].strip()} ({seconds:.0f} s to find out)")
    return seconds


def quick_start(place: Place, report: Report) -> dict[str, float]:
    log = place.run("demo", place.python, "scripts/pi_check_demo.py", "--pictl", f"{place.home}/venv/bin/pictl",
                    timeout=900, cwd=f"{place.home}/pictl", echo=True)
    result = [line for line in log.read_text().splitlines() if line.startswith("RESULT ")]
    figures: dict[str, float] = json.loads(result[-1].removeprefix("RESULT ")) if result else {}
    report.prove(f"{place.name}: the README quick start answered as documented (door.open confirmed, the "
                 "jammed door -32002 with the relay released, fan.on, hall_temp.read), and without --simulate "
                 "the demo config failed at once with one line naming the device and --simulate")
    return figures


def core_tests(place: Place, report: Report, args: list[str], figures: dict[str, float]) -> None:
    where = place.run("wheel-import", place.python, "-c", "import controller; print(controller.__file__)",
                      timeout=300, cwd=f"{place.home}/pictl").read_text().strip()
    if "site-packages" not in where:
        raise StepFailed(f"{place.name}: the tests would import pictl from {where}, not the installed wheel")
    # The per-test timeout is a net for hangs, not a measure: qemu-user runs 5-10x slower than this host.
    # The fuzz tests draw CI's fixed examples (tests/conftest.py's profile "ci"), as CI's own run does:
    # without CI in the environment, which would fail, not skip, the tests whose tools the root lacks.
    pytest = [place.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "pi_check_plugin",
              "--hypothesis-profile=ci", f"--timeout={TEST_TIMEOUT_S if place.session else 60}"]
    absent = ",".join(f"{LIBRARY[extra]}={extra}" for arch, extra in sorted(NEEDS_A_COMPILER) if arch == place.arch)
    env = {"PYTHONPATH": f"{place.home}/pictl/scripts", "PICTL_PI_ABSENT": absent, "PICTL_PI_ARCH": place.arch}
    # As `make test` runs them: the tests marked alone (loop latency, tight physics) first, on their
    # own; then the rest on pytest-xdist workers, those of one xdist_group on one worker.
    failed: list[str] = []
    skips: list[tuple[str, str]] = []
    passed = figures["tests"] = 0.0  # pytest's own time of both runs, even when one fails
    logs = []
    for name, how in (("tests-alone", ["-m", "alone"]),
                      ("tests", ["-n", str(WORKERS), "--dist", "loadgroup", "-m", "not alone"])):
        code, log = place.attempt(name, *pytest, *how, "--durations=5", *args, timeout=60 * 60,
                                  cwd=f"{place.home}/pictl", echo=True, env=env)
        text, summary = log.read_text(errors="replace"), pytest_summary(log)
        figures["tests"] += summary.get("seconds", 0.0)
        passed += summary.get("passed", 0.0)
        skips += re.findall(r"^SKIPPED \[(\d+)\] \S+: (.*)$", text, re.M)
        failed += re.findall(r"^(?:FAILED|ERROR) (\S+::\S+)", text, re.M)
        logs.append(log)
        if code not in (0, 1, 5) or re.search(r"errors? during collection", text) or (code == 1 and not failed):
            raise StepFailed(f"{place.name}: pytest stopped (exit {code}; log {log}):\n" + "\n".join(
                text.splitlines()[-15:]))
    if failed:
        if len(failed) > RERUN_AT_MOST:
            raise StepFailed(f"{place.name}: {len(failed)} core tests failed: {' '.join(failed)} (logs {logs})")
        # Timing under an emulated CPU: each failure gets one more run, alone. A test that fails again
        # fails the check; one that passes is reported as flaky under emulation, never silently.
        print(f"    {len(failed)} failed; once more, alone: {' '.join(failed)}", flush=True)
        code, again = place.attempt("tests-again", *pytest, *failed, timeout=30 * 60, cwd=f"{place.home}/pictl",
                                    echo=True, env=env)
        if code != 0:
            tail = "\n".join(again.read_text(errors="replace").splitlines()[-15:])
            raise StepFailed(f"{place.name}: core tests failed twice (log {again}):\n{tail}")
        report.findings.append(f"{place.name}: flaky under emulation (failed, then passed alone): "
                               f"{', '.join(failed)} (logs {', '.join(map(str, logs))})")
        passed += len(failed)
    if unexplained := [reason for _, reason in skips if not TOOL_SKIP.search(reason)]:
        raise StepFailed(f"{place.name}: core tests skipped for another reason than a tool the root lacks: "
                         f"{'; '.join(sorted(set(unexplained)))} (logs {logs})")
    tools = sum(int(n) for n, _ in skips)
    skipped = f" ({tools} skipped: for want of a tool missing here, as their reasons say)" if tools else ""
    report.prove(f"{place.name}: {passed:.0f} core tests passed against the installed wheel in "
                 f"{figures['tests']:.0f} s of pytest time{skipped}")


def build_wheel(dest: Path) -> Path:
    """pictl's wheel, built from a copy of the tracked files (as a clean clone would; no build/ left here)."""
    source = dest / "source"
    copy_tree(source, skip=())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dest), str(source)],
                   check=True)
    shutil.rmtree(source)
    made = sorted(dest.glob("pictl-*.whl"))
    if len(made) != 1:
        raise StepFailed(f"pip wheel made {len(made)} pictl wheels")
    return made[0]


def prepare_root(s: Session, report: Report, wheel: Path) -> dict[str, str]:
    """The Pi user, the repository's files (not its packages: the wheel) and pip's settings."""
    log = s.work.parent / "logs"
    if s.run(["useradd", "--create-home", "--shell", "/bin/bash", "pi"], log / "root-useradd.log",
             timeout=300) != 0:
        raise StepFailed(f"useradd pi failed (log {log})")
    owner = s.user_ids("pi")
    copy_tree(s.root / HOME.lstrip("/") / "pictl", owner)
    shutil.copy2(wheel, s.root / HOME.lstrip("/") / wheel.name)
    os.chown(s.root / HOME.lstrip("/") / wheel.name, *owner)
    compilers = [c for c in ("cc", "gcc", "c++", "clang", "rustc") if
                 any((s.root / d.lstrip("/") / c).exists() for d in PATH.split(":"))]
    if compilers:
        raise StepFailed(f"the root has a compiler ({', '.join(compilers)}): it must not (Pi users rarely do)")
    report.prove("no compiler in the root (no cc, gcc, c++, clang, rustc): whatever installs, installs from wheels "
                 "or pure Python")
    return bring_pip_settings(s, report)


def emulated(args: argparse.Namespace, report: Report, wheel: Path, logs: Path, figures: dict[str, float]) -> None:
    """Every step inside the root, its figures into *figures* as they come (keyed as the host's are)."""
    with report.step("qemu-user through binfmt_misc"):
        report.prove(f"binfmt_misc: {ensure_binfmt(args.arch)}")
    with report.step("root (debootstrap, or the cache)"):
        base, what = ensure_root(args.cache, args.arch, host_mirror(), logs / "debootstrap.log")
        report.prove(what)
    with Session(base, args.cache / args.arch / "run") as s:
        env = prepare_root(s, report, wheel)
        python = s.run(["python3", "-c", "import platform, sys; print(platform.machine(), sys.version.split()[0])"],
                       logs / "root-python.log", timeout=300)
        if python != 0:
            raise StepFailed(f"python3 does not run in the root (log {logs / 'root-python.log'})")
        report.prove(f"the root runs {(logs / 'root-python.log').read_text().strip()} (Pi OS bookworm: Python 3.11.2)")
        place = Place("emulated", args.arch, HOME, logs, s, env)
        place.wheel = f"{HOME}/{wheel.name}"
        all_steps(place, report, True, args.pytest_args, figures)


def all_steps(place: Place, report: Report, tests: bool, extra_pytest: list[str], figures: dict[str, float]) -> None:
    """Install, extras, lgpio, the quick start and (with *tests*) the core tests; figures as they come."""
    with report.step("install: venv + pip install the wheel"):
        figures["install"] = install(place, report)
    for name, module in LIBRARY.items():
        with report.step(f"extra [{name}]"):
            figures[f"extra-{name}"] = extra(place, report, name, module)
    with report.step("pip install lgpio (the Pi's pin factory)"):
        t0 = time.perf_counter()
        log = place.run("lgpio", place.pip, "install", "lgpio", timeout=1800)
        place.run("lgpio-import", place.python, "-c", "import lgpio", timeout=300)
        figures["lgpio"] = time.perf_counter() - t0
        built, wheels = pip_findings(log)
        report.prove(f"{place.name}: `pip install lgpio` and `import lgpio` in {figures['lgpio']:.0f} s, from "
                     + (f"source ({', '.join(built)})" if built else ", ".join(wheels) or "a pure-Python wheel"))
    with report.step("quick start on the demo plant"):
        demo = quick_start(place, report)
        figures.update({f"demo-{k}": v for k, v in demo.items()})
    if tests:
        with report.step("test tools (pytest ...)"):
            place.run("tools", place.pip, "install", *test_tools(), timeout=1800)
        with report.step("core tests"):
            core_tests(place, report, core_test_args(place.arch) + extra_pytest, figures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(QEMU), default="arm64", help="Pi OS 64-bit (arm64) or 32-bit (armhf)")
    parser.add_argument("--cache", type=Path, default=Path("/var/cache/pictl-pi-check"),
                        help="where the roots are kept between runs (outside the repository)")
    parser.add_argument("--compare", action="store_true", help="run the core tests on the host too (x86 figure)")
    parser.add_argument("pytest_args", nargs="*", metavar="PYTEST_ARG",
                        help="after --: more for pytest in the core-test run (e.g. -- -k reload -x)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("pi-check: run as root (debootstrap, chroot and mount need it)", file=sys.stderr)
        return 2
    if args.cache.resolve().is_relative_to(REPO):
        print("pi-check: --cache must be outside the repository", file=sys.stderr)
        return 2
    logs = args.cache / args.arch / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # unwind (and unmount) as for Ctrl-C
        signal.signal(sig, lambda number, _: sys.exit(128 + number))
    report = Report(args.arch, logs)
    failures: list[str] = []
    emu: dict[str, float] = {}
    x86: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="pictl-pi-check-") as tmp:
            with report.step("wheel, built on the host"):
                wheel = build_wheel(Path(tmp))
                report.prove(f"the repository builds {wheel.name}")
            try:
                emulated(args, report, wheel, logs, emu)
            except StepFailed as exc:  # the x86 figures still come, for what was measured
                failures.append(str(exc))
            host = Place("x86", "x86", tmp, logs, None, {})
            host.wheel = str(wheel)
            copy_tree(Path(tmp) / "pictl")
            all_steps(host, report, args.compare, args.pytest_args, x86)
    except (StepFailed, RootError, subprocess.CalledProcessError, OSError) as exc:
        failures.append(str(exc))
    except KeyboardInterrupt:
        failures.append("interrupted")
    report.print("\n".join(failures) or None, emu, x86)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
