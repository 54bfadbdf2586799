"""Which node each rank runs on, and the one line that names a lost peer when a collective breaks.

Why: when a node's ranks die mid-run, gloo fails the next collective on the survivors at once with a message such
as "Read error [10.0.0.12]:41234: Connection reset by peer": an address, not a rank or a node, and the teardown
that follows (engine destroy, barrier) raises again with a traceback per rank. With a table gathered once at
start-up (every rank's node name and addresses), a survivor prints one line naming the lost node and its ranks and
exits at once (1, no checkpoint: ZeRO-3 cannot save without the lost shards); the next submission resumes from the
last complete checkpoint.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from dataclasses import dataclass

import psutil
import torch.distributed as dist

EXIT_PEER_LOST = 1
_PEER_ADDR_RE = re.compile(r"\[([0-9A-Fa-f:.]+)\]:\d+")  # gloo's "[ADDR]:PORT" of the broken connection


@dataclass(frozen=True)
class Peer:
    rank: int
    node: str
    addrs: tuple[str, ...]


_TABLE: list[Peer] = []


def node_name() -> str:
    """Slurm's name for this node under Slurm (hostnames can repeat, e.g. containers), else the hostname."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def _own_addrs() -> tuple[str, ...]:
    nics = psutil.net_if_addrs().values()
    return tuple(sorted({a.address for nic in nics for a in nic if a.family in (socket.AF_INET, socket.AF_INET6)}))


def gather_peers() -> list[Peer]:
    """A collective (every rank calls it once, after the process group starts): every rank's node and addresses."""
    mine = (node_name(), _own_addrs())
    rows: list[object] = [mine]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        rows = [None] * dist.get_world_size()
        dist.all_gather_object(rows, mine)
    _TABLE[:] = [Peer(rank, node, tuple(addrs)) for rank, (node, addrs) in enumerate(rows)]  # type: ignore[misc]
    return list(_TABLE)


def lost_peer_line(exc: BaseException, me: int) -> str | None:
    """The line naming the node (and ranks) at the address a broken collective reports; None if it names none."""
    match = _PEER_ADDR_RE.search(str(exc))
    if not match or not _TABLE:
        return None
    addr = match.group(1)
    lost = [p for p in _TABLE if addr in p.addrs and p.rank != me]
    if not lost:
        return None
    nodes = ", ".join(sorted({p.node for p in lost}))
    ranks = ", ".join(str(p.rank) for p in lost)
    cause = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return (
        f"adakd-distill: error: rank {me} on {node_name()} lost node {nodes} (rank {ranks}, {addr}): its ranks died "
        f"or it left the network; submit again to resume from the last complete checkpoint [{cause}]"
    )


def exit_if_peer_lost(exc: BaseException, me: int) -> None:
    """Print the lost-peer line and leave now: the process group is unusable, and teardown would raise or hang."""
    line = lost_peer_line(exc, me)
    if line is None:
        return
    from adakd_ds.engine.guard.supervisor import report_exit

    print("\n" + line, file=sys.stderr, flush=True)  # on a line of its own, not after a progress bar
    sys.stdout.flush()
    os._exit(report_exit(EXIT_PEER_LOST))
