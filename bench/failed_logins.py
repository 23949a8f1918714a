"""What failed logins cost the daemon: CPU seconds for N wrong bearer tokens, before and after
tokens were looked up by a fast digest (issue 12), side by side in one run.

    .venv/bin/python bench/failed_logins.py                 # 1,000 failed logins, 2 and 10 tokens
    .venv/bin/python bench/failed_logins.py --quick         # seconds: checks that it runs (CI)
    .venv/bin/python bench/failed_logins.py --before-rev REV --logins 1000 --tokens 2 10

"Before" is the code at ``--before-rev`` (default: 128ba5d, the last commit with PBKDF2 per token),
unpacked from git into a temporary directory and run from there with its config format (PBKDF2,
100,000 iterations, as ``pictl token create`` made them). "After" is this tree with digests
(``sha256$``), and this tree reading PBKDF2 hashes left in an old config ("after, old hashes").
Each daemon is a child process (``pictl serve --simulate``) on a one-switch plant; its CPU time
(user + system, all threads, from /proc) is read before and after the logins. The logins are
WebSocket handshakes with a wrong ``Authorization: Bearer``, 10 at a time, spread over loopback
addresses so that no lockout or slowdown cuts the work short.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, tree_launcher, unpack
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

sys.path.insert(0, str(ROOT))
from controller.security.secrets import digest_secret, hash_secret

CLK_TCK = os.sysconf("SC_CLK_TCK")
PER_ADDRESS = 50  # failed logins per source address (lockout_after is far above it)

CONFIG = """
[server]
listen = "127.0.0.1:0"

[auth]
slowdown_after = 1000
lockout_after = 10000

[auth.roles.admin]
allow = ["*"]

{tokens}

[devices.light]
kind = "switch"
output = {{ gpio = 22 }}
"""


def config_text(tokens: int, slow: bool) -> str:
    blocks = []
    for i in range(tokens):
        secret = f"bench-secret-{i:03d}-0123456789"
        verifier = hash_secret(secret) if slow else digest_secret(secret)
        blocks.append(f'[auth.tokens.t{i}]\nrole = "admin"\nhash = "{verifier}"\n')
    return CONFIG.format(tokens="\n".join(blocks))


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def serve(tree: Path, config: Path) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(*tree_launcher(tree), "serve", "--config", str(config),
                                                "--simulate", cwd=tree, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    while True:
        line = (await proc.stderr.readline()).decode()
        if not line:
            raise RuntimeError(f"the daemon from {tree} exited before serving")
        match = re.search(r"serving (wss?://\S+)", line)
        if match:
            drain = asyncio.get_running_loop().create_task(proc.stderr.read())
            DRAINS.add(drain)
            return proc, match.group(1)


DRAINS: set[asyncio.Task[bytes]] = set()


async def failed_logins(url: str, n: int) -> None:
    slots = asyncio.Semaphore(10)

    async def one(i: int) -> None:
        async with slots:
            source = f"127.0.{40 + i // PER_ADDRESS // 250}.{i // PER_ADDRESS % 250 + 1}"
            try:
                async with connect(url, additional_headers={"Authorization": f"Bearer wrong-{i}"},
                                   local_addr=(source, 0), open_timeout=60):
                    raise AssertionError("a wrong token was accepted")
            except InvalidStatus as refused:
                assert refused.response.status_code == 401, refused.response.status_code

    await asyncio.gather(*(one(i) for i in range(n)))


async def measure(tree: Path, tokens: int, slow: bool, logins: int, work: Path) -> tuple[float, float]:
    """CPU seconds and wall seconds the daemon spent on *logins* failed logins."""
    config = work / f"bench-{tokens}-{int(slow)}-{tree.name}.toml"
    config.write_text(config_text(tokens, slow))
    proc, url = await serve(tree, config)
    try:
        await asyncio.sleep(0.5)  # let start-up settle: only the logins are measured
        before, t0 = cpu_s(proc.pid), time.perf_counter()
        await failed_logins(url, logins)
        return cpu_s(proc.pid) - before, time.perf_counter() - t0
    finally:
        proc.terminate()
        await proc.wait()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 logins, 2 tokens: check that it runs")
    ap.add_argument("--logins", type=int, default=1000)
    ap.add_argument("--tokens", type=int, nargs="+", default=[2, 10])
    ap.add_argument("--before-rev", default="128ba5d", help="git revision of the code to compare with")
    args = ap.parse_args()
    logins, counts = (20, [2]) if args.quick else (args.logins, args.tokens)
    print(f"failed logins: {logins} wrong bearer tokens per run; CPU of the daemon process, all threads; "
          f"{os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        before = unpack(args.before_rev, work / "before")
        if before is None:
            print(f"  (no 'before': git cannot give {args.before_rev} here)")
        print(f"  {'tokens':>6}  {'code':<28} {'CPU s':>8} {'CPU ms/login':>13} {'wall s':>7}  CPU vs before")
        for n in counts:
            rows: list[tuple[str, float, float]] = []
            if before is not None:
                rows.append((f"before ({args.before_rev}, PBKDF2)", *await measure(before, n, True, logins, work)))
            rows.append(("after, old PBKDF2 hashes", *await measure(ROOT, n, True, logins, work)))
            rows.append(("after, sha256$ digests", *await measure(ROOT, n, False, logins, work)))
            base = rows[0][1] if before is not None else 0.0
            for name, cpu, wall in rows:
                ratio = f"{cpu / base:.4f}x" if base else "-"
                print(f"  {n:>6}  {name:<28} {cpu:>8.2f} {cpu / logins * 1000:>13.3f} {wall:>7.1f}  {ratio}")


if __name__ == "__main__":
    asyncio.run(main())
