"""A real two-node Slurm cluster on one machine: slurmctld plus one slurmd per network namespace.

Why namespaces: every multi-node bug (the master address, node ranks, the hostfile, a signal that reaches one node
first, a node that dies, a directory one node cannot see) needs two hosts with their own addresses. Each node is a
network namespace made here, joined to a bridge made here by a veth pair, with an address in a private /24 on that
bridge; slurmctld listens on the bridge address in the root namespace. munge (a Unix socket) and the filesystem are
shared. Each slurmd also gets a mount namespace of its own with /etc/netns/<ns>/hosts bind-mounted on /etc/hosts, so
node1/node2 resolve inside the jobs, and a mount made there (``hide_on``) is seen by that node only.

Everything is torn down by name and pid (daemons, job processes, namespaces, links, /etc/netns folders), also when a
test fails; ``leftovers()`` lists whatever survived, and the fixture fails when that list is not empty.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.slurm.slurm_cluster import (
    SlurmCluster,
    SlurmUnavailable,
    _alive,
    _ensure_sbin_on_path,
    _start_munged,
    ensure_slurm_installed,
    reap_by_conf,
    write_conf,
)

NODE_IFNAME = "adakd0"  # the interface name inside every node namespace (GLOO_SOCKET_IFNAME)
NODES = ("node1", "node2")


class NetnsUnavailable(RuntimeError):
    """No network namespaces here (not root, or no `ip`)."""


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {proc.returncode}): {proc.stderr.strip()}")
    return proc


def _free_subnet() -> str:
    """A 10.213.K.0/24 that no interface or route here uses yet ("10.213.K")."""
    used = _ip("-4", "route").stdout + _ip("-4", "addr").stdout
    for k in [(os.getpid() + i) % 200 + 20 for i in range(200)]:
        if f"10.213.{k}." not in used:
            return f"10.213.{k}"
    raise RuntimeError("no free 10.213.K.0/24 subnet for the test bridge")


@dataclass
class TwoNodeCluster(SlurmCluster):
    """SlurmCluster plus the namespaces: ``addrs`` maps node name to its address, ``netns`` to its namespace."""

    bridge: str = ""
    netns: dict[str, str] = field(default_factory=dict)
    addrs: dict[str, str] = field(default_factory=dict)
    mounts: list[tuple[str, str]] = field(default_factory=list)

    def bridge_addr(self) -> str:
        """The controller's address: .1 of the nodes' /24, on the bridge in the root namespace."""
        return next(iter(self.addrs.values())).rsplit(".", 1)[0] + ".1"

    def hide_on(self, node: str, path: Path) -> None:
        """Mount an empty tmpfs over ``path`` in ``node``'s mount namespace only: the path exists there, empty."""
        pid = self.pids[f"slurmd-{node}"]
        cmd = ["nsenter", "-t", str(pid), "-m", "mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)
        self.mounts.append((node, str(path)))

    def ns_pids(self, node: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns[node]], capture_output=True, text=True, timeout=30)
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> None:
        try:
            for node, path in self.mounts:
                pid = self.pids.get(f"slurmd-{node}")
                if pid and _alive(pid):
                    subprocess.run(["nsenter", "-t", str(pid), "-m", "umount", path], capture_output=True, timeout=30)
            super().stop()
        finally:
            for node, ns in self.netns.items():
                for pid in self.ns_pids(node):  # anything still inside a namespace dies with it
                    try:
                        os.kill(pid, 9)
                    except ProcessLookupError:
                        pass
                reap_by_conf(self.conf)
                _ip("netns", "del", ns, check=False)
                shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
            if self.bridge:
                _ip("link", "del", self.bridge, check=False)

    def leftovers(self) -> list[str]:
        left = super().leftovers()
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
        left += [f"namespace {ns}" for ns in self.netns.values() if ns in names.split()]
        left += [f"/etc/netns/{ns}" for ns in self.netns.values() if os.path.exists(f"/etc/netns/{ns}")]
        links = _ip("-o", "link", check=False).stdout
        left += [f"link {self.bridge}" for _ in [0] if self.bridge and f" {self.bridge}:" in links]
        return left


def _make_network(cluster: TwoNodeCluster) -> None:
    tag = os.getpid() % 100000
    subnet = _free_subnet()
    host = socket.gethostname().split(".")[0]
    cluster.bridge = f"akbr{tag}"
    _ip("link", "add", cluster.bridge, "type", "bridge")
    _ip("addr", "add", f"{subnet}.1/24", "dev", cluster.bridge)
    _ip("link", "set", cluster.bridge, "up")
    for i, node in enumerate(NODES, start=1):
        ns, addr = f"adakd{tag}-{node}", f"{subnet}.{10 + i}"
        _ip("netns", "add", ns)
        cluster.netns[node], cluster.addrs[node] = ns, addr
        veth = f"akv{tag}n{i}"
        _ip("link", "add", veth, "type", "veth", "peer", "name", NODE_IFNAME, "netns", ns)
        _ip("link", "set", veth, "master", cluster.bridge, "up")
        _ip("addr", "add", f"{addr}/24", "dev", NODE_IFNAME, ns=ns)
        _ip("link", "set", NODE_IFNAME, "up", ns=ns)
        _ip("link", "set", "lo", "up", ns=ns)
    for node, ns in cluster.netns.items():  # node names resolve, and this host's name is the node's own address
        os.makedirs(f"/etc/netns/{ns}", exist_ok=True)
        lines = ["127.0.0.1 localhost"] + [
            f"{addr} {other}" + (f" {host}" if other == node else "") for other, addr in cluster.addrs.items()
        ]
        Path(f"/etc/netns/{ns}/hosts").write_text("\n".join(lines) + "\n")


def _check_privilege() -> None:
    if shutil.which("ip") is None:
        raise NetnsUnavailable("`ip` (iproute2) is not installed")
    probe = f"adakdprobe{os.getpid()}"
    proc = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise NetnsUnavailable(f"cannot create a network namespace: {proc.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)


def _in_node(ns: str) -> list[str]:
    """A command prefix: a private mount namespace with the node's /etc/hosts, inside the node's network namespace.

    Not `ip netns exec`, which remounts /sys and so hides the cgroup mounts slurmd insists on finding.
    """
    script = f'mount --bind /etc/netns/{ns}/hosts /etc/hosts && exec nsenter --net=/run/netns/{ns} "$@"'
    return ["unshare", "--mount", "--propagation", "slave", "sh", "-c", script, "in-node"]


def _wait_pid_file(path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no pid file {path}; see the logs beside it")
        time.sleep(0.05)
    return int(path.read_text().strip())


def start_two_node_cluster(root: Path, cpus: int = 4, timeout: float = 30) -> TwoNodeCluster:
    """Namespaces and bridge, munged, slurmctld on the bridge address, `slurmd -N nodeK` inside each namespace."""
    _ensure_sbin_on_path()
    ensure_slurm_installed()
    _check_privilege()
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("state", *(f"spool-{n}" for n in NODES)):
        (root / sub).mkdir(parents=True)
    cluster = TwoNodeCluster(root=root, conf=root / "slurm.conf", node=NODES[0])
    try:
        _make_network(cluster)
        cluster.conf = write_conf(root, cluster.bridge_addr(), [(n, cluster.addrs[n]) for n in NODES], cpus)
        cluster.started_munged = _start_munged()
        steps = [("slurmctld", [], "slurmctld.pid")]
        steps += [(f"slurmd-{n}", _in_node(cluster.netns[n]), f"slurmd-{n}.pid") for n in NODES]
        for name, prefix, pid_file in steps:
            daemon = name.split("-")[0]
            cmd = [*prefix, daemon, "-f", str(cluster.conf)] + (["-N", name.split("-")[1]] if "-" in name else [])
            proc = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=30)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed (rc {proc.returncode}): {proc.stderr.strip()}")
            cluster.pids[name] = _wait_pid_file(root / pid_file, timeout)
        deadline = time.monotonic() + timeout
        want = "\n".join(f"{n} idle" for n in NODES)
        while cluster.run("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout.strip() != want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nodes never became idle; see the logs under {root}")
            time.sleep(0.1)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="module", name="two_node_cluster")
def two_node_cluster_fixture() -> Iterator[TwoNodeCluster]:
    """One two-node cluster per test module; skips with one line without privilege, fails instead under CI=true."""
    tmp = tempfile.mkdtemp(prefix="adakd-2node-")
    reason = None
    try:
        cluster = start_two_node_cluster(Path(tmp) / "cluster")
    except (SlurmUnavailable, NetnsUnavailable) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = f"no two-node local Slurm: {exc}"
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: the two-node tests must not skip)", pytrace=False)
        pytest.skip(reason)
    try:
        yield cluster
    finally:
        try:
            cluster.stop()
            left = cluster.leftovers()
            assert not left, f"the two-node cluster left these behind: {left}"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
