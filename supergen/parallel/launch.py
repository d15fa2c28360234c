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

When a rank dies
----------------
On gloo (CPU) the survivors' next collective fails at once ("connection closed by peer") or after
``parallel.timeout_s``, and every survivor raises :class:`~supergen.parallel.RankFailure` naming the
step ("another rank died or did not answer within parallel.timeout_s").

NCCL (GPU) differs: collectives are queued on the GPU stream and return at once, and failures are
found by PyTorch's NCCL *watchdog* thread. With PyTorch's default ``TORCH_NCCL_ASYNC_ERROR_HANDLING=3``
the watchdog, after ``parallel.timeout_s``, logs "Watchdog caught collective operation timeout" and
**kills the process** (SIGABRT) — the user sees a C++ stack dump and no supergen message. :func:`init`
therefore sets ``TORCH_NCCL_ASYNC_ERROR_HANDLING=2`` (abort the communicators, keep the process) unless
the user set it: the pending collective then raises in Python, and the survivors report the same
:class:`~supergen.parallel.RankFailure` as on CPU. A dead peer can take up to ``parallel.timeout_s``
to be noticed (no "connection closed" shortcut on NCCL); lower it for quick failure in tests. This
path is written from PyTorch's documented semantics and not yet exercised on GPUs (no GPU test
machine); ``TORCH_NCCL_ASYNC_ERROR_HANDLING=3`` restores PyTorch's default.
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
#: Set when a collective failed because a peer is gone (:func:`mark_broken`).
_BROKEN = False


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
        sub_meshes: for every proper divisor ``k`` > 1 of ``size``, the ``ring × ulysses`` (1 × k) mesh of
            this rank's sub-group of ``k`` consecutive ranks (:meth:`sub`).
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
    sub_meshes: dict[int, DeviceMesh] = field(default_factory=dict, compare=False, repr=False)
    #: The group a sub-group (:meth:`sub`) belongs to: bytes counted on the sub-group count there too.
    parent: "TileGroup | None" = field(default=None, compare=False, repr=False)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def sub(self, k: int) -> "TileGroup":
        """This rank's sub-group of ``k`` consecutive ranks (``k`` divides ``size``): the ranks that run
        one unit of work together with Ulysses when the ranks outnumber the units. Its ``mesh`` and
        ``seq_mesh`` are both its ``ring × ulysses`` mesh."""
        if k == self.size:
            return self
        if k not in self.sub_meshes:
            raise ValueError(f"no sub-group of {k} ranks in a group of {self.size}; sizes: {sorted(self.sub_meshes)}")
        mesh = self.sub_meshes[k]
        return TileGroup(mesh.get_group("ulysses"), self.rank % k, k, self.rank // k, self.size // k, self.global_rank,
                         self.device, mesh, mesh, parent=self)

    def global_of(self, group_rank: int) -> int:
        """Global rank of the group's rank ``group_rank``."""
        return dist.get_global_rank(self.pg, group_rank)

    def count_bytes(self, nbytes: int) -> None:
        """Record ``nbytes`` sent by this rank (for the per-stage bytes of the render summary)."""
        self.bytes_sent += nbytes
        if self.parent is not None:
            self.parent.count_bytes(nbytes)

    def sum_over_ranks(self, values: list[int]) -> list[int]:
        """Element-wise sum of ``values`` over the group's ranks; every rank gets the sums."""
        if not values:
            return []
        total = torch.tensor(values, dtype=torch.int64, device=self.device)
        dist.all_reduce(total, group=self.pg)
        return total.tolist()

    def broadcast_from_leader(self, tensor: torch.Tensor) -> None:
        """Overwrite ``tensor`` in place, on every rank of the group, with the leader's copy.

        Any view on any device works: NCCL moves only contiguous buffers on the group's device (gloo
        does not check), so such a buffer is made when ``tensor`` is not one, and copied back.
        """
        buffer = collective_buffer(tensor, self.device)
        if self.is_leader:
            self.count_bytes(buffer.nbytes)
        dist.broadcast(buffer, src=self.global_of(0), group=self.pg)
        if buffer is not tensor:
            tensor.copy_(buffer)


def collective_buffer(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``tensor`` itself when a collective can use it as is (contiguous, on ``device``, of ``dtype``), else a copy that can."""
    return tensor.to(device=device, dtype=dtype or tensor.dtype).contiguous()


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
    if use_cuda:  # see "When a rank dies" in the module docstring
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
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
    # Sub-groups of k consecutive ranks (k a proper divisor of the group size) lie inside one group.
    sub_meshes = {k: init_device_mesh(device.type, (world // k, 1, k), mesh_dim_names=("unit", "ring", "ulysses"))["ring", "ulysses"]
                  for k in range(2, size) if size % k == 0}
    _ACTIVE = TileGroup(groups[index], rank % size, size, index, world // size, rank, device, world_mesh[MESH_DIMS],
                        seq_mesh["ring", "ulysses"], sub_meshes=sub_meshes)
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


def mark_broken() -> None:
    """A collective failed with a peer gone: leave the group at exit without the farewell barrier.

    The barrier would wait ``parallel.timeout_s`` for the dead rank (gloo's barrier may route this
    rank's wait through a live peer that is itself still blocked on this rank's missing tiles), and
    a live peer blocked on this rank wakes only when this process closes its connections: one slow
    exit made the next rank report the timeout instead of the closed connection.
    """
    global _BROKEN
    _BROKEN = True


def shutdown() -> None:
    """Leave the process group cleanly (barrier first: gloo aborts at exit after mixed p2p and
    collectives), promptly when the group is broken (:func:`mark_broken`)."""
    global _ACTIVE, _PATIENT
    _ACTIVE = _PATIENT = None
    if dist.is_initialized():
        if not _BROKEN:
            try:
                dist.barrier()
            except Exception as exc:  # a peer already gone: nothing to wait for
                logger.warning("leaving the process group without a barrier (%s)", exc)
        dist.destroy_process_group()
