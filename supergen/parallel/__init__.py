"""Parallelism on torch.distributed: process groups and their device mesh, the tile exchanger (whole
tiles or (tile, guidance branch) units), the sketch's CFG split, the rank-parallel VAE.

Applied from outside the model (torchtitan style): nothing here changes model code; each parallel
dimension is one named piece (:func:`init` makes the mesh, :class:`TileExchanger` spreads the
refinement, :func:`split_guidance` hooks the sketch's transformer, :func:`ulysses` puts the sketch on
diffusers' context parallelism, :func:`split_tokens` with :class:`HeadExchange` and
:class:`CanvasRunner` splits attention mode's canvas forward, :class:`TiledVAE` the VAE). See
``docs/architecture.md`` ("Tile parallelism") and :mod:`supergen.parallel.exchanger`. Launch with any of::

    torchrun --nproc_per_node 8 $(which supergen) render ...        # or: torchrun ... -m supergen render ...
    accelerate launch --multi_gpu --num_processes 8 -m supergen render ...
    torchrun --nproc_per_node 8 -m supergen render --jobs jobs.jsonl --output-dir out/ parallel.group_size=4

One process needs none of this. On a CPU-only machine the same commands use gloo (accelerate's
``--cpu`` starts a single process; ``--multi_gpu`` is what starts several, GPUs or not).
"""

from .canvas import CanvasRunner, HeadExchange, canvas_blocker, split_tokens
from .exchanger import RankFailure, TileExchanger, balance
from .context import ulysses, ulysses_blocker
from .launch import TileGroup, active_group, init, launched, shutdown, wait_for_all_groups
from .mesh import MESH_DIMS, ParallelPlan, plan_parallel, sequence_split
from .sketch import split_guidance
from .vae import TiledVAE

__all__ = [
    "CanvasRunner", "HeadExchange", "canvas_blocker", "split_tokens", "MESH_DIMS", "ParallelPlan", "RankFailure", "TileExchanger", "TileGroup", "TiledVAE", "active_group", "balance", "init", "launched",
    "plan_parallel", "sequence_split", "shutdown", "split_guidance", "ulysses", "ulysses_blocker", "wait_for_all_groups",
]
