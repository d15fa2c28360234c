"""A render farm on Ray: ``supergen render --jobs FILE --output-dir DIR --ray [auto|ADDRESS]``.

The batch of :mod:`supergen.jobs` with Ray as its scheduler instead of one fixed ``torchrun`` world:

- **A render group** is ``parallel.group_size`` Ray actors (:class:`RenderRank`), one GPU each (one
  CPU each on a cluster without GPUs), reserved together by one placement group (``STRICT_PACK``: on
  one node, never half a group). The group's actors form their own ``torch.distributed`` group (NCCL
  on GPUs, gloo on CPU) at the first actor's address, through the same environment ``torchrun``
  sets, so :meth:`~supergen.runtime.Runtime.start` and the parallel render run in them unchanged.
  Each group loads the pipeline once.
- **Jobs are pulled:** the driver (the process that runs the command) hands the next job to the
  next idle group, so the makespan follows the work, not the order of the file.
- **Faults:** when a rank dies (``kill -9``, a lost node, an out-of-memory kill) or fails alone, its
  group is torn down, the temporary files it was writing are removed, and its job goes back to the
  front of the queue, up to ``parallel.attempts`` starts; then it is recorded
  ``failed after N attempts``. A replacement group is asked for at once and starts when the cluster
  has room. A job that finished before its group died is recorded, not rendered again.
- **One writer:** the driver alone appends to ``results.jsonl``, claims jobs
  (:func:`~supergen.jobs.claim`) and prints progress. The group's leader writes the video and its
  sidecar into ``DIR`` as a ``torchrun`` batch does (atomically, the same names and sidecars, the
  same resume rule), so ``DIR`` must be the same folder on every node (a shared file system), and a
  farm run resumes a ``torchrun`` run's folder and the other way round.

See ``docs/farm.md`` for clusters over several machines.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections import Counter, deque
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .config import SuperGenConfig
from .errors import SuperGenError
from .jobs import Job, _record, _render_one, claim
from .runtime import Runtime
from .videoio import temporaries

logger = logging.getLogger("supergen")


def connect(address: str) -> tuple[Any, bool]:
    """The ``ray`` module joined to a cluster, and whether this call joined it: ``""`` Ray's default
    (``RAY_ADDRESS``, else a new local instance), ``auto`` the cluster this machine is part of, else
    the cluster at that address. A process already connected (``ray.init`` called before) stays on its cluster."""
    try:
        import ray
    except ImportError:
        raise SuperGenError('--ray needs Ray: pip install "supergen[ray]"') from None
    if ray.is_initialized():
        return ray, False
    try:
        ray.init(address=address or None)
    except ConnectionError as exc:
        raise SuperGenError(f"--ray {address}: no Ray cluster there ({str(exc).splitlines()[0]}); "
                            "start one with `ray start --head`, or pass --ray alone for a local one") from None
    return ray, True


class RenderRank:
    """One rank of a render group: a Ray actor process that holds the loaded pipeline."""

    #: This rank's model and process group, from :meth:`start`.
    runtime: Runtime

    def describe(self) -> dict[str, Any]:
        """Where this actor runs: its node's address, a free port there (the group's rendezvous when
        this is its first rank), its PID and the GPU ids Ray gave it."""
        import ray

        with socket.socket() as s:  # free now; bound again by the rendezvous a moment later
            s.bind(("", 0))
            port = s.getsockname()[1]
        return {"ip": ray.util.get_node_ip_address(), "port": port, "pid": os.getpid(), "gpus": [str(g) for g in ray.get_gpu_ids()]}

    def start(self, config: SuperGenConfig, rank: int, *members: dict[str, Any]) -> None:
        """Join the group's ranks (``members``: every rank's :meth:`describe`, in rank order) and load the model."""
        first = members[0]
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(len(members)), LOCAL_RANK="0", LOCAL_WORLD_SIZE=str(len(members)),
                          MASTER_ADDR=first["ip"], MASTER_PORT=str(first["port"]))
        if members[rank]["gpus"]:
            # Ray shows each actor its own GPU only; NCCL's peer-to-peer paths (NVLink) need every rank to
            # see the group's GPUs (STRICT_PACK put them on one node), as torchrun's ranks do.
            os.environ.update(CUDA_VISIBLE_DEVICES=",".join(m["gpus"][0] for m in members), LOCAL_RANK=str(rank))
        self.runtime = Runtime.start(config, quiet=True)

    def render(self, job: Job, out: str) -> dict[str, Any]:
        """Render ``job`` into ``out`` as a ``torchrun`` batch rank does; its results record (the leader's is the one kept)."""
        return _render_one(self.runtime, job, Path(out), record_fatal=False)


@dataclass
class Group:
    """A render group as the driver sees it."""

    index: int
    placement: Any
    actors: list[Any]
    #: Every rank's :meth:`RenderRank.describe` (object refs until the group is up).
    members: list[Any]
    #: The ranks' current calls in rank order (their start calls, then a job's render calls) and those still in flight.
    calls: list[Any]
    pending: list[Any]
    pids: list[int] = field(default_factory=list)
    job: Job | None = None
    #: The leader's results record of the job in flight, once it has returned.
    result: dict[str, Any] | None = None
    started: bool = False

    @property
    def state(self) -> str:
        if not self.started:
            return "starting"
        return f"line {self.job.line}" if self.job is not None else "idle"


@dataclass
class FarmReport:
    """What happened to the render groups of one farm run."""

    #: Groups asked for (the first ones and replacements).
    groups: int = 0
    #: Groups lost, with why (``"group 1: actor 1234 died"``).
    lost: list[str] = field(default_factory=list)


class Farm:
    """The driver: render groups on a Ray cluster, a queue of jobs, one writer of ``results.jsonl``.

    Args:
        config: the batch's config (its ``model`` and ``parallel`` sections hold for every job).
        out: the output folder (the same path on every node).
        run_id: this run's id in ``results.jsonl``.
        on_dispatch: called as ``on_dispatch(group index, job, the group's actor PIDs)`` when a job is
            handed to a group (to watch the farm, or to kill a rank in a fault test).
    """

    def __init__(self, ray: Any, config: SuperGenConfig, out: Path, run_id: str, quiet: bool = False,
                 on_dispatch: Callable[[int, Job, list[int]], None] | None = None):
        self.ray, self.config, self.out, self.run_id, self.quiet, self.on_dispatch = ray, config, out, run_id, quiet, on_dispatch
        self.size = config.parallel.group_size or 1  # 0 ("all ranks" under torchrun) has no meaning on a cluster: 1
        self.gpus = config.model.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1
        if config.model.device.startswith("cuda") and not self.gpus:
            raise SuperGenError(f"model.device={config.model.device} but the Ray cluster has no GPU; use model.device=auto or cpu")
        self.groups: list[Group] = []
        self.queue: deque[Job] = deque()
        self.attempts: Counter[str] = Counter()
        #: Groups lost before they were up, since one last came up: a cluster that cannot start any is given up on.
        self.lost_starting = 0
        self.actor = ray.remote(RenderRank)
        self.claims: dict[str, ExitStack] = {}
        self.total = self.done = 0
        self.report = FarmReport()

    def capacity(self) -> int:
        """How many groups the cluster's live nodes hold at once (a group lies on one node)."""
        unit = "GPU" if self.gpus else "CPU"
        return sum(int(node["Resources"].get(unit, 0)) // self.size for node in self.ray.nodes() if node["Alive"])

    def run(self, jobs: list[Job]) -> FarmReport:
        """Render ``jobs`` (those still to do) and record each one's outcome."""
        self.queue.extend(jobs)
        self.total = len(jobs)
        if jobs and not self.capacity():
            unit = "GPU" if self.gpus else "CPU"
            raise SuperGenError(f"no node of the Ray cluster has {self.size} {unit}s for a render group of "
                                f"parallel.group_size={self.size}; use a group size that fits a node")
        while self.queue or any(g.job is not None for g in self.groups):
            self.top_up()
            for group in self.groups:
                while group.started and group.job is None and self.queue:
                    self.dispatch(group, self.queue.popleft())
            in_flight = {ref: g for g in self.groups for ref in g.pending}
            if not in_flight:  # the queue's jobs were all skipped, or no group is left to take them
                break
            ready, _ = self.ray.wait(list(in_flight), num_returns=1, timeout=self.config.parallel.timeout_s)
            if ready:
                self.collect(in_flight[ready[0]], ready[0])
            elif not any(g.started for g in self.groups) and not any(self.placed(g) for g in self.groups):
                self.fail_queue(f"no render group could be placed within parallel.timeout_s={self.config.parallel.timeout_s:g} s "
                                f"(the cluster has no free node with {self.size} {'GPU' if self.gpus else 'CPU'}s)")
        self.fail_queue("no render group left to take it")
        return self.report

    def top_up(self) -> None:
        """Ask for groups while the cluster holds more than there are and there is work for them: the first
        groups, a lost group's replacement, groups on nodes that joined the cluster since."""
        wanted = min(self.capacity(), len(self.queue) + sum(g.job is not None for g in self.groups))
        for _ in range(wanted - len(self.groups)):
            self.start_group()

    def start_group(self) -> None:
        """Ask for a render group: a placement group of ``size`` bundles, an actor on each, then their start calls."""
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = {"CPU": 1, "GPU": 1} if self.gpus else {"CPU": 1}
        placement = placement_group([bundle] * self.size, strategy="STRICT_PACK")
        actors = [self.actor.options(num_cpus=1, num_gpus=1 if self.gpus else 0, scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement, placement_group_bundle_index=rank)).remote() for rank in range(self.size)]
        members = [a.describe.remote() for a in actors]
        # The start calls take every rank's description (Ray resolves the refs first): no round trip here.
        pending = [a.start.remote(self.config, rank, *members) for rank, a in enumerate(actors)]
        self.groups.append(Group(self.report.groups, placement, actors, members, pending, list(pending)))
        self.report.groups += 1
        self.progress()

    def placed(self, group: Group) -> bool:
        from ray.util.placement_group import placement_group_table

        return placement_group_table(group.placement).get("state") == "CREATED"

    def dispatch(self, group: Group, job: Job) -> None:
        """Hand ``job`` to the idle ``group``, unless another batch holds it or it is finished (then it is recorded skipped)."""
        if job.name not in self.claims:  # held from the first start to the final record, retries included
            stack = ExitStack()
            if stack.enter_context(claim(self.out, job.name)) and not job.finished_in(self.out):
                self.claims[job.name] = stack
            else:  # another batch holds it, or finished it since the plan
                stack.close()
                return self.finish(job, {"status": "skipped", "output": str(self.out / f"{job.name}.mp4"),
                                         "note": "rendered by another batch"})
        self.attempts[job.name] += 1
        group.job = job
        group.calls = [a.render.remote(job, str(self.out)) for a in group.actors]
        group.pending = list(group.calls)
        if self.on_dispatch is not None:
            self.on_dispatch(group.index, job, group.pids)
        self.progress()

    def collect(self, group: Group, ref: Any) -> None:
        """One call of ``group`` returned: the group is up, or its job is done, or the group is lost."""
        try:
            value = self.ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - a rank died (RayActorError) or failed alone: the group cannot go on
            return self.lose(group, exc)
        group.pending.remove(ref)
        if ref == group.calls[0]:
            group.result = value
        if group.pending:
            return  # the other ranks' calls
        if not group.started:
            group.started = True
            self.lost_starting = 0
            group.pids = [m["pid"] for m in self.ray.get(group.members)]
            self.progress()
            return
        job, record = group.job, group.result
        group.job = group.result = None
        self.finish(job, {k: v for k, v in record.items() if k not in ("line", "name")})

    def lose(self, group: Group, exc: BaseException) -> None:
        """Tear ``group`` down; its job goes back to the queue (or is recorded failed after ``parallel.attempts``)."""
        from ray.exceptions import RayActorError, RayTaskError

        if isinstance(exc, RayTaskError) and not group.started and not isinstance(exc, RayActorError):
            # The model does not load, or the ranks do not meet: every replacement would fail the same way.
            self.teardown(group)
            raise SuperGenError(f"a render group could not start: {_first_line(exc.cause if exc.cause is not None else exc)}")
        reason = f"group {group.index}: " + (f"a rank's process died ({_first_line(exc)})" if isinstance(exc, RayActorError)
                                             else f"a rank raised {_first_line(exc.cause if isinstance(exc, RayTaskError) else exc)}")
        logger.warning("%s; the group is torn down", reason)
        self.report.lost.append(reason)
        job = group.job
        self.teardown(group)
        if not group.started:
            self.lost_starting += 1
            if self.lost_starting >= self.config.parallel.attempts:
                raise SuperGenError(f"{self.lost_starting} render groups in a row died while starting (parallel.attempts="
                                    f"{self.config.parallel.attempts}); the last: {reason}")
        if job is not None:
            for path in job.outputs(self.out):
                for tmp in temporaries(path):  # the dead rank's half-written file never takes the finished name
                    tmp.unlink(missing_ok=True)
            if job.finished_in(self.out):
                self.finish(job, {"status": "ok", "output": str(self.out / f"{job.name}.mp4"),
                                  "note": "finished before its group was lost"})
            elif self.attempts[job.name] >= self.config.parallel.attempts:
                self.finish(job, {"status": "failed", "error": f"failed after {self.attempts[job.name]} attempts: {reason}"})
            else:
                _record(self.out, {"run": self.run_id, "line": job.line, "name": job.name, "status": "retried",
                                   "attempt": self.attempts[job.name], "error": reason})
                self.queue.appendleft(job)  # first in line: it has waited longest

    def teardown(self, group: Group, closing: bool = False) -> None:
        """Kill ``group``'s actors, free its placement group, and wait until its calls have ended (its processes are gone)."""
        from ray.util.placement_group import remove_placement_group

        self.groups.remove(group)
        for actor in group.actors:
            self.ray.kill(actor)
        remove_placement_group(group.placement)
        if group.pending:
            self.ray.wait(group.pending, num_returns=len(group.pending), timeout=60)
        if not closing:
            self.progress()

    def finish(self, job: Job, outcome: dict[str, Any]) -> None:
        """Record ``job``'s final outcome and release its claim."""
        _record(self.out, {"run": self.run_id, "line": job.line, "name": job.name, **outcome})
        stack = self.claims.pop(job.name, None)
        if stack is not None:
            stack.close()
        self.done += 1
        self.progress()

    def fail_queue(self, error: str) -> None:
        while self.queue:
            self.finish(self.queue.popleft(), {"status": "failed", "error": error})

    def progress(self) -> None:
        """One line: a bar of jobs done out of the total, and each group's state."""
        if self.quiet or not self.total:
            return
        filled = 20 * self.done // self.total
        states = "  ".join(f"g{g.index}: {g.state}" for g in self.groups) or "no group"
        print(f"farm [{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total}  {states}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Kill every group and release every claim (also when the run stops on an error)."""
        for group in list(self.groups):
            self.teardown(group, closing=True)
        for stack in self.claims.values():
            stack.close()
        self.claims.clear()


def render_farm(config: SuperGenConfig, jobs: list[Job], out: Path, run_id: str, address: str = "", quiet: bool = False,
                on_dispatch: Callable[[int, Job, list[int]], None] | None = None) -> FarmReport:
    """Render ``jobs`` (the batch's jobs still to do) on render groups of a Ray cluster; record them in ``out/results.jsonl``.

    Args:
        address: the cluster (:func:`connect`). A local instance started here is shut down at the end.
        on_dispatch: see :class:`Farm`.
    """
    ray, joined = connect(address)
    try:
        farm = Farm(ray, config, out, run_id, quiet, on_dispatch)
        try:
            return farm.run(jobs)
        finally:
            farm.close()
    finally:
        if joined:
            ray.shutdown()


def farm_renderer(config: SuperGenConfig, address: str = "", quiet: bool = False) -> Callable[[list[Job], Path, str], FarmReport]:
    """What :func:`supergen.jobs.render_jobs` takes as ``elsewhere`` to send a batch's jobs to the Ray farm."""
    return lambda jobs, out, run_id: render_farm(config, jobs, out, run_id, address, quiet=quiet)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
