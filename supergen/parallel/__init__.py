"""Tile parallelism on torch.distributed: process groups, the tile exchanger, the rank-parallel VAE.

Applied from outside the model (torchtitan style): nothing here changes model code. See
``docs/architecture.md`` ("Tile parallelism") and :mod:`supergen.parallel.exchanger`. Launch with any of::

    torchrun --nproc_per_node 8 $(which supergen) render ...        # or: torchrun ... -m supergen render ...
    accelerate launch --multi_gpu --num_processes 8 -m supergen render ...
    torchrun --nproc_per_node 8 -m supergen render --jobs jobs.jsonl --output-dir out/ parallel.group_size=4

One process needs none of this. On a CPU-only machine the same commands use gloo (accelerate's
``--cpu`` starts a single process; ``--multi_gpu`` is what starts several, GPUs or not).
"""

from .exchanger import RankFailure, TileExchanger, balance
from .launch import TileGroup, active_group, init, launched, shutdown, wait_for_all_groups
from .vae import TiledVAE

__all__ = ["RankFailure", "TileExchanger", "TileGroup", "TiledVAE", "active_group", "balance", "init", "launched", "shutdown", "wait_for_all_groups"]
