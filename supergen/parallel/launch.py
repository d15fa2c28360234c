"""Process groups for tile parallelism, from the environment ``torchrun`` / ``accelerate launch`` set.

One process needs no launcher: without ``WORLD_SIZE`` > 1 in the environment :func:`init` returns
None and everything runs in-process. With a launcher, :func:`init`

- starts the default process group (NCCL when the model runs on CUDA, one GPU per local rank; gloo
  on CPU) with ``parallel.timeout_s`` as the bound on every collective wait, so a dead or hung rank
  ends the job with an error instead of a hang;
- checks that every rank was started with the same config (a mismatch is reported at start-up,
  naming the ranks, rather than surfacing as a hang or a silently different video);
- splits the world into groups of ``parallel.group_size`` ranks (job parallelism in batch
  rendering; each group does tile parallelism within one video): one device mesh of the world with
  dimensions ``job × cfg × tile`` (:mod:`supergen.parallel.mesh`), each group a ``cfg × tile`` slice.
"""

from __future__ import annotations

import atexit
import copy
import datetime
import hashlib
import logging
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from ..config import SuperGenConfig, to_yaml
from ..errors import ConfigError
from .mesh import MESH_DIMS, mesh_shape

logger = logging.getLogger("supergen")

_ACTIVE: "TileGroup | None" = None
#: A gloo group of all ranks without a practical timeout, for waits that last as long as other
#: groups' jobs (the end of a batch), which ``parallel.timeout_s`` must not bound.
_PATIENT: dist.ProcessGroup | None = None


@dataclass
class TileGroup:
    """The ranks that render one video together, as seen from one of them.

    Attributes:
        pg: the torch process group of these ranks (the default group when there is one group).
        rank: this process' rank within the group; 0 is the group's leader (it writes the outputs).
        size: ranks in the group.
        index: which group this is, ``0 .. count - 1``.
        count: how many groups the world is split into.
        global_rank: this process' rank in the world.
        device: this rank's device (``cuda:LOCAL_RANK`` with NCCL, else ``cpu``).
        mesh: the group's ranks as a :class:`~torch.distributed.device_mesh.DeviceMesh` with the
            dimensions :data:`~supergen.parallel.mesh.MESH_DIMS`.
        seq_mesh: the same ranks as the ``ring × ulysses`` (1 × size) mesh diffusers' context
            parallelism takes (:mod:`supergen.parallel.context`).
        bytes_sent: bytes this rank has sent to the group so far (collectives add to it; stages read
            the difference).
    """

    pg: dist.ProcessGroup
    rank: int
    size: int
    index: int
    count: int
    global_rank: int
    device: torch.device
    mesh: DeviceMesh
    seq_mesh: DeviceMesh
    bytes_sent: int = field(default=0, compare=False)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def global_of(self, group_rank: int) -> int:
        """Global rank of the group's rank ``group_rank``."""
        return dist.get_global_rank(self.pg, group_rank)

    def count_bytes(self, nbytes: int) -> None:
        """Record ``nbytes`` sent by this rank (for the per-stage bytes of the render summary)."""
        self.bytes_sent += nbytes

    def sum_over_ranks(self, values: list[int]) -> list[int]:
        """Element-wise sum of ``values`` over the group's ranks; every rank gets the sums."""
        if not values:
            return []
        total = torch.tensor(values, dtype=torch.int64, device=self.device)
        dist.all_reduce(total, group=self.pg)
        return total.tolist()

    def broadcast_from_leader(self, tensor: torch.Tensor) -> None:
        """Overwrite ``tensor`` (contiguous, on :attr:`device`) in place, on every rank of the group, with the leader's copy."""
        if self.is_leader:
            self.count_bytes(tensor.nbytes)
        dist.broadcast(tensor, src=self.global_of(0), group=self.pg)


def launched() -> bool:
    """True when a launcher started several processes (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active_group() -> TileGroup | None:
    """The group :func:`init` set up in this process, or None in a single process."""
    return _ACTIVE


def init(cfg: SuperGenConfig) -> TileGroup | None:
    """Join the launcher's process group and split it into render groups; None without a launcher.

    The group's ``device`` is this rank's: ``cuda:LOCAL_RANK`` when ``model.device`` is auto or cuda on a
    GPU machine (one device per rank), else the CPU. The config is not modified.

    Raises:
        ConfigError: ranks started with different configs, or a world size ``group_size`` does not divide.
    """
    global _ACTIVE, _PATIENT
    if not launched():
        return None
    if _ACTIVE is not None:
        return _ACTIVE
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = cfg.model.device.startswith("cuda") or (cfg.model.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=cfg.parallel.timeout_s)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout, device_id=device if use_cuda else None)
        # Also on the error paths below: gloo aborts the process at exit without a clean shutdown.
        atexit.register(shutdown)
    rank, world = dist.get_rank(), dist.get_world_size()
    check_same_config(cfg)
    size = cfg.parallel.group_size or world
    if world % size:
        raise ConfigError(f"parallel.group_size={size} does not divide the world size {world}; use a divisor of {world}")
    # Every rank must create every group, in the same order (torch.distributed's rule for new_group).
    groups = [dist.new_group(list(range(g * size, (g + 1) * size)), timeout=timeout) for g in range(world // size)] if size < world else [dist.group.WORLD]
    index = rank // size
    _PATIENT = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=7))
    # Ranks g·size … (g+1)·size − 1 form group g, as the groups above: the mesh's leading dimension.
    world_mesh = init_device_mesh(device.type, (world // size, *mesh_shape(size)), mesh_dim_names=("job", *MESH_DIMS))
    seq_mesh = init_device_mesh(device.type, (world // size, 1, size), mesh_dim_names=("job", "ring", "ulysses"))
    _ACTIVE = TileGroup(groups[index], rank % size, size, index, world // size, rank, device, world_mesh[MESH_DIMS],
                        seq_mesh["ring", "ulysses"])
    logger.info("%d ranks (%s), %d group(s) of %d, mesh %s", world, dist.get_backend(), world // size, size,
                " × ".join(f"{n}={s}" for n, s in zip(MESH_DIMS, mesh_shape(size))))
    return _ACTIVE


def check_same_config(cfg: SuperGenConfig) -> None:
    """Raise :class:`ConfigError` on every rank if any rank's resolved config differs from rank 0's.

    ``model.device`` is excluded: it legitimately differs (one GPU per rank).
    """
    snapshot = copy.deepcopy(cfg)
    snapshot.model.device = "per-rank"
    digest = hashlib.sha256(to_yaml(snapshot).encode()).hexdigest()
    digests: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    odd = [r for r, d in enumerate(digests) if d != digests[0]]
    if odd:
        raise ConfigError(
            f"ranks {odd} were started with a config different from rank 0's; every rank must get the same "
            "config file and key=value overrides"
        )


def wait_for_all_groups() -> None:
    """Block until every rank of the world gets here, however long other groups' jobs take."""
    if _PATIENT is not None:
        dist.barrier(group=_PATIENT)


def shutdown() -> None:
    """Leave the process group cleanly (barrier first: gloo aborts at exit after mixed p2p and collectives)."""
    global _ACTIVE, _PATIENT
    _ACTIVE = _PATIENT = None
    if dist.is_initialized():
        try:
            dist.barrier()
        except Exception as exc:  # a peer already gone: nothing to wait for
            logger.warning("leaving the process group without a barrier (%s)", exc)
        dist.destroy_process_group()
