"""Where a command runs and where it writes: a local Ray or a cluster, and storage that
every node of the cluster sees.

The zoo builder and the sweeps take both from the command line (`--address`, `--storage`)
or the environment (`RAY_ADDRESS`, which `ray job submit` sets for its entrypoint, and
`WSMERGE_STORAGE`). A relative path a command is given (`--out`, `--results`, a sweep's
`run.zoo`) is read under the storage root, so the same command line works on a laptop and
on a cluster whose shared file system is mounted at, say, /shared.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator

__all__ = ["ADDRESS_ENV", "STORAGE_ENV", "check_shared", "node_id", "ray_session", "storage_root", "under"]

ADDRESS_ENV = "RAY_ADDRESS"
STORAGE_ENV = "WSMERGE_STORAGE"
_PROBE_TIMEOUT_S = 60


def storage_root(given: str | os.PathLike | None) -> Path | None:
    """The storage root: `given` (--storage), else $WSMERGE_STORAGE, else None (the current
    directory). It must exist: a mount that is missing must not turn into a local folder."""
    raw = given if given is not None else os.environ.get(STORAGE_ENV) or None
    if raw is None:
        return None
    root = Path(raw).expanduser()
    if not root.is_dir():
        where = "--storage" if given is not None else f"${STORAGE_ENV}"
        raise ValueError(f"{where} {raw}: not a directory (mount the shared file system there first)")
    return root.resolve()


def under(root: Path | None, path: str | os.PathLike) -> Path:
    """`path` read under the storage root when it is relative."""
    path = Path(path).expanduser()
    return path if root is None or path.is_absolute() else root / path


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Ray for the length of a command: the cluster at `address` (or $RAY_ADDRESS) when one
    is given, else a local Ray started here and shut down after. A Ray already initialised
    in this process (a notebook, a test) is used as it is and left running."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get(ADDRESS_ENV) or None
    if address:
        ray.init(address=address)  # the cluster as it is configured (cluster/README.md)
    else:
        ray.init(include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def node_id() -> str:
    """The Ray node this process runs on."""
    import ray

    return ray.get_runtime_context().get_node_id()


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def check_shared(folders: list[Path] = (), files: list[Path] = ()) -> None:
    """Make sure every live node of the Ray cluster sees `folders` (a file written there by
    this driver is readable on the node; created if missing) and `files` (the same text as
    here). Trials write their run folders where they run and read the zoo where they run, so
    a path on one node's own disk would lose results or fail every trial. Raises ValueError
    naming the node and the path; a one-node Ray passes."""
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        probe = folder / f".wsmerge-probe-{token}"
        probe.write_text(token)
        try:
            _same_everywhere(nodes, probe, token, folder)
        finally:
            probe.unlink(missing_ok=True)
    for file in files:
        _same_everywhere(nodes, file, file.read_text(), file)


def _same_everywhere(nodes: list[dict], path: Path, text: str, shown: Path) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    read = ray.remote(num_cpus=0)(_read)
    refs = {
        read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(path)): n
        for n in nodes
    }
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=_PROBE_TIMEOUT_S)
    for ref in late:
        n = refs[ref]
        raise ValueError(f"node {n['NodeManagerAddress']} ({n['NodeID'][:8]}) did not answer within "
                         f"{_PROBE_TIMEOUT_S} s whether it sees {shown}")
    for ref in ready:
        if ray.get(ref) != text:
            n = refs[ref]
            raise ValueError(
                f"node {n['NodeManagerAddress']} ({n['NodeID'][:8]}) does not see {shown} as the driver does: "
                f"put it on a file system every node mounts (--storage or ${STORAGE_ENV}; cluster/README.md)"
            )
