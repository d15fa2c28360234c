"""Tile parallelism on torch.distributed: process groups, the tile exchanger, the rank-parallel VAE.

Applied from outside the model (torchtitan style): nothing here changes model code. See
design.md §1.6 and :mod:`supergen.parallel.exchanger`.
"""

from .exchanger import RankFailure, TileExchanger, balance
from .launch import TileGroup, active_group, init, launched, shutdown
from .vae import TiledVAE

__all__ = ["RankFailure", "TileExchanger", "TileGroup", "TiledVAE", "active_group", "balance", "init", "launched", "shutdown"]
