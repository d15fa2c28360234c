"""The prompts and seeds every quality claim is measured on: a tuning set and a disjoint test set.

Rules and defaults (cache thresholds and weighting, tiling defaults, refine strength) are chosen on
the **tuning** set only; the numbers in ``docs/`` are reported on the **test** set, which was not
looked at while choosing them. A render is one (prompt, noise seed) pair; prompts are captions of
toy-world scenes (:func:`supergen.eval.toyworld.sample_scene`), so every prompt is in the toy
model's grammar.

* tuning: scenes 1000-1007, noise seeds 0 and 1 - the 16 renders the cache rule (issue 16) and
  the quality defaults were tuned on before this split existed, named so that they stay tuning.
* test: scenes ``3 * 10**9 + 0 … 7``, noise seeds 100 and 101. The toy model's training clips use
  scene seeds below ``10**9``, its held-out clips ``10**9…`` and its validation clips ``2 * 10**9…``
  (``scripts/train_toy_model.py``), so no test scene was trained, validated or tuned on.

Both sets hold 8 prompts x 2 seeds = 16 renders, the least a reported row may rest on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from supergen.errors import ConfigError
from supergen.eval.toyworld import sample_scene


@dataclass(frozen=True)
class EvalSet:
    """Scenes (by toy-world seed) and noise seeds; the renders are every scene with every noise seed."""

    name: str
    scene_seeds: tuple[int, ...]
    noise_seeds: tuple[int, ...]

    def prompts(self) -> list[str]:
        """The scenes' captions, in ``scene_seeds`` order."""
        return [sample_scene(np.random.default_rng(s)).caption() for s in self.scene_seeds]

    def renders(self) -> list[tuple[str, int]]:
        """``(prompt, noise seed)`` pairs, prompt-major: render ``i`` is prompt ``i // len(noise_seeds)``."""
        return [(p, s) for p in self.prompts() for s in self.noise_seeds]


SETS: dict[str, EvalSet] = {
    "tuning": EvalSet("tuning", tuple(range(1000, 1008)), (0, 1)),
    "test": EvalSet("test", tuple(range(3 * 10**9, 3 * 10**9 + 8)), (100, 101)),
}


def eval_set(name: str) -> EvalSet:
    """The set called ``name`` ("tuning" or "test")."""
    if name not in SETS:
        raise ConfigError(f"evaluation set {name!r} does not exist; valid: {', '.join(SETS)}")
    return SETS[name]
