"""The held-out protocol: tuning and test sets (supergen.eval.sets) and the interval (supergen.eval.stats)."""

import numpy as np
import pytest

from supergen.errors import ConfigError, SuperGenError
from supergen.eval.sets import SETS, eval_set
from supergen.eval.stats import mean_interval, paired_difference, t_quantile
from supergen.eval.toyworld import vocabulary


def test_tuning_and_test_share_no_scene_seed_or_prompt():
    tuning, test = SETS["tuning"], SETS["test"]
    assert not set(tuning.scene_seeds) & set(test.scene_seeds)
    assert not set(tuning.noise_seeds) & set(test.noise_seeds)
    assert not set(tuning.prompts()) & set(test.prompts())


@pytest.mark.parametrize("name", ["tuning", "test"])
def test_each_set_has_at_least_16_distinct_renders_in_the_toy_grammar(name):
    renders = eval_set(name).renders()
    assert len(renders) >= 16 and len(set(renders)) == len(renders)
    prompts = eval_set(name).prompts()
    assert len(set(prompts)) == len(prompts) == 8
    words = set(vocabulary())
    assert all(set(p.split()) <= words for p in prompts)
    assert renders[:2] == [(prompts[0], s) for s in eval_set(name).noise_seeds]  # prompt-major


def test_test_scenes_lie_outside_the_toy_models_training_held_out_and_validation_seeds():
    # scripts/train_toy_model.py: training < 10**9, held-out 10**9..., validation 2 * 10**9...
    assert min(SETS["test"].scene_seeds) >= 3 * 10**9


def test_unknown_set_is_one_line_naming_the_valid_ones():
    with pytest.raises(ConfigError, match="'heldout'.*tuning, test"):
        eval_set("heldout")


def test_interval_holds_the_mean_and_narrows_with_more_renders():
    rng = np.random.default_rng(1)
    small, large = mean_interval(rng.normal(2.0, 1.0, 16)), mean_interval(rng.normal(2.0, 1.0, 256))
    for i in (small, large):
        assert i.low < i.mean < i.high
    assert large.high - large.low < (small.high - small.low) / 2
    assert mean_interval([3.0] * 16) == mean_interval([3.0] * 16)  # deterministic
    assert mean_interval([3.0] * 16).low == mean_interval([3.0] * 16).high == 3.0


@pytest.mark.parametrize("confidence, dof, table", [(0.95, 1, 12.706), (0.95, 2, 4.303), (0.95, 15, 2.131),
                                                      (0.95, 30, 2.042), (0.99, 5, 4.032), (0.90, 7, 1.895)])
def test_t_quantile_matches_the_printed_table(confidence, dof, table):
    assert t_quantile(confidence, dof) == pytest.approx(table, abs=1e-3)


def test_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    covered = sum(i.low <= 0.5 <= i.high for i in (mean_interval(rng.normal(0.5, 2.0, 16)) for _ in range(1000)))
    # binomial(1000, 0.95): 950 ± 7; the bootstrap tried first covered about 910, a z interval about 930
    assert 925 <= covered <= 975


def test_paired_difference_verdicts_follow_the_metrics_direction():
    base = np.linspace(30.0, 40.0, 16)
    better = paired_difference(base + 1.0 + 0.1 * np.sin(np.arange(16)), base)
    assert better.verdict == "better" and better.no_worse == 16 and better.difference.low > 0
    noisy = paired_difference(base + np.where(np.arange(16) % 2 == 0, 1.0, -1.0), base)
    assert noisy.verdict == "tie" and noisy.no_worse == 8
    seam = paired_difference(base + 1.0, base, higher_is_better=False)  # higher seam score is worse
    assert seam.verdict == "worse" and seam.no_worse == 0
    assert str(better).endswith("16/16 better")


def test_bad_input_is_refused_with_its_shape():
    with pytest.raises(SuperGenError, match="at least 2 finite"):
        mean_interval([1.0, float("nan")])
    with pytest.raises(SuperGenError, match="same renders"):
        paired_difference([1.0, 2.0], [1.0, 2.0, 3.0])
