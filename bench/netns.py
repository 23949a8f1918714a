"""Network namespaces for bench/partition.py: one per process, two bridges, links cut and restored.

Every host (a node, the broker, the router, the aggregator) gets a namespace of its own with two
veth links into the root namespace: ``data0`` on the data bridge (198.18.0.0/24: the network the
parts of a building talk over, the one that is cut) and ``mgmt0`` on the management bridge
(198.19.0.0/24: the benchmark's own view of each host, never cut). Both ranges are 198.18.0.0/15,
set aside for network benchmarks (RFC 2544). No namespace has a default route: nothing leaves the
machine. The root namespace holds .1 on both bridges (it starts the processes and watches them).

A cut is ``ip link set DEV down`` on the root side of a host's data link: the host keeps its
address, its packets go nowhere, its TCP connections stall until they time out or the link comes
back (no netem in this kernel: a cut is all or nothing). Everything is named with a prefix of its
own and removed at the end, on failure too; leftovers of a killed run are removed at the next start.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

PREFIX = "pp"  # every interface and namespace name starts with it (leftovers are found by it)
DATA_BRIDGE, MGMT_BRIDGE = f"{PREFIX}br-data", f"{PREFIX}br-mgmt"
DATA_NET, MGMT_NET = "198.18.0", "198.19.0"


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Host:
    name: str  # short: [a-z0-9]{1,8}
    index: int  # its addresses end in this

    @property
    def netns(self) -> str:
        return f"{PREFIX}-{self.name}"

    @property
    def data(self) -> str:
        return f"{DATA_NET}.{self.index}"

    @property
    def mgmt(self) -> str:
        return f"{MGMT_NET}.{self.index}"

    @property
    def data_link(self) -> str:
        """The root side of its data link: what a cut sets down."""
        return f"{PREFIX}d-{self.name}"

    @property
    def run(self) -> tuple[str, ...]:
        """argv prefix that runs a command inside it."""
        return ("ip", "netns", "exec", self.netns)


@dataclass
class Network:
    hosts: dict[str, Host] = field(default_factory=dict)
    cut: set[str] = field(default_factory=set)  # hosts whose data link is down

    def add(self, name: str) -> Host:
        host = self.hosts[name] = Host(name, 10 + len(self.hosts))
        return host

    def build(self) -> None:
        remove_leftovers()
        for bridge, net in ((DATA_BRIDGE, DATA_NET), (MGMT_BRIDGE, MGMT_NET)):
            ip("link", "add", bridge, "type", "bridge")
            ip("addr", "add", f"{net}.1/24", "dev", bridge)
            ip("link", "set", bridge, "up")
        for host in self.hosts.values():
            ip("netns", "add", host.netns)
            ip("-n", host.netns, "link", "set", "lo", "up")
            for kind, bridge, address in (("d", DATA_BRIDGE, host.data), ("m", MGMT_BRIDGE, host.mgmt)):
                outside, inside = f"{PREFIX}{kind}-{host.name}", "data0" if kind == "d" else "mgmt0"
                ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", host.netns)
                ip("link", "set", outside, "master", bridge)
                ip("link", "set", outside, "up")
                ip("-n", host.netns, "addr", "add", f"{address}/24", "dev", inside)
                ip("-n", host.netns, "link", "set", inside, "up")

    def set_cut(self, name: str, cut: bool) -> None:
        ip("link", "set", self.hosts[name].data_link, "down" if cut else "up")
        (self.cut.add if cut else self.cut.discard)(name)

    def remove(self) -> None:
        remove_leftovers()


def remove_leftovers() -> None:
    """Every namespace and link of ours, from this run or one that was killed."""
    for line in ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(f"{PREFIX}-"):
            ip("netns", "del", name, check=False)  # its veth ends go with it, and so do their peers
    for line in ip("-o", "link", "show", check=False).splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(PREFIX):
                ip("link", "del", name, check=False)
