"""output.dir must be one directory for every rank: a file written by global rank 0 must be visible to all.

Why: ZeRO-3 checkpoints are written shard by shard, each rank into output.dir, and resumed by reading all of them;
on a node whose output.dir is a local disk (or a mount missing there), each node writes its own half-checkpoint
and the run can never resume. The per-rank write probe cannot see that (every node can write its own copy), so
right after the process group starts, rank 0 writes a token, every rank looks for it, and a node that cannot see it
is named in one line (exit 2) before any model is built. Called from the recipe's setup.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import torch.distributed as dist

from adakd_ds.engine.guard.peers import Peer, gather_peers

VISIBLE_WAIT_S = 2.0  # a filesystem such as NFS may show a new file on another node a moment later


class OutputDirNotShared(ValueError):
    """output.dir differs between nodes; a ValueError, so the CLI prints it as one line and exits 2."""


def _sees(path: Path, token: str, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while True:
        try:
            if path.read_text(encoding="utf-8") == token:
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def check_output_dir_shared(out: Path, rank: int) -> list[Peer]:
    """A collective: every rank calls it once after init. Raises OutputDirNotShared on every rank when a rank
    cannot see rank 0's token file; returns the peer table (see peers.py) otherwise."""
    peers = gather_peers()
    if len(peers) == 1:
        return peers
    box: list[object] = [secrets.token_hex(8) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    token = str(box[0])
    probe = out / f".adakd-shared-{token}"
    if rank == 0:
        probe.write_text(token, encoding="utf-8")
    dist.barrier()
    seen: list[object] = [None] * len(peers)
    dist.all_gather_object(seen, _sees(probe, token, VISIBLE_WAIT_S if rank != 0 else 0.0))
    if rank == 0:
        probe.unlink(missing_ok=True)
    blind = [p for p, ok in zip(peers, seen, strict=True) if not ok]
    if blind:
        nodes = ", ".join(sorted({p.node for p in blind}))
        ranks = ", ".join(str(p.rank) for p in blind)
        raise OutputDirNotShared(
            f"output.dir {out}: node {nodes} (rank {ranks}) cannot see a file that rank 0 wrote there on "
            f"{peers[0].node}: output.dir must be on a filesystem shared by every node"
        )
    return peers
