"""Tests on several CPU ranks: real ``torch.distributed`` processes over gloo, started by torchrun.

A multi-rank test runs a script (usually its own file, whose ``__main__`` is the rank's work) on N
processes; each rank saves what it saw as ``out_dir/rank{r}.pt`` and the test compares those with a
one-process reference computed under :func:`single_thread`, as each rank runs with one thread.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import torch


def free_port() -> int:
    """A TCP port free on this machine now (for a rendezvous or a server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(ranks: int, *target: str, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run`` on ``ranks`` one-thread processes and a free port.

    Args:
        target: a script and its arguments, or ``"-m", module, ...``.
        env: variables added to this process' environment.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", str(free_port()), *target]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def run_ranks(script: str, ranks: int, out_dir: Path, timeout: float, env: dict[str, str] | None = None) -> list:
    """Run ``script out_dir`` on ``ranks`` ranks; each rank's results (``out_dir/rank{r}.pt``), in rank order."""
    proc = torchrun(ranks, script, str(out_dir), timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(ranks)]


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread, as each rank has: CPU kernels split reductions by thread count, so a
    one-process reference must use the ranks' thread count to compare bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def parallel_leftovers(model: torch.nn.Module) -> list[str]:
    """What a render left on ``model`` that a plain diffusers model does not have: diffusers hooks
    (context-parallel or cache), attention processors still holding a parallel config, supergen's
    processors or modules swapped in, torch forward hooks, the model's own parallel config.
    Empty when the model is as it was loaded."""
    left = []
    for name, module in model.named_modules():
        left += [f"{name}: diffusers hook {h}" for h in getattr(getattr(module, "_diffusers_hook", None), "hooks", {})]
        if type(module).__module__.startswith("supergen"):
            left.append(f"{name}: {type(module).__name__}")
        if module._forward_hooks or module._forward_pre_hooks:
            left.append(f"{name}: torch forward hooks")
        processor = getattr(module, "processor", None)
        if processor is not None and type(processor).__module__.startswith("supergen"):
            left.append(f"{name}: {type(processor).__name__}")
        if getattr(processor, "_parallel_config", None) is not None:
            left.append(f"{name}: processor parallel config")
    if getattr(model, "_parallel_config", None) is not None:
        left.append("model parallel config")
    return left
