import optuna
import pytest

from sweep import ConfigError, parse_config
from sweep._space import Space, select_layers

LAYERS = ["stem", "block1.conv", "block1.dw", "block2.conv", "classifier"]


def _space(**search: object) -> Space:
    config = parse_config({"name": "x", "task": "digits", "search_space": search})
    return Space(
        tuple(select_layers(LAYERS, config.search_space)), config.search_space, config.trial
    )


def test_layers_by_glob_and_exclude() -> None:
    assert _space(layers=["block*"], exclude=["*.dw"]).layers == ("block1.conv", "block2.conv")
    assert _space().layers == tuple(LAYERS)


def test_pattern_that_matches_nothing_is_an_error() -> None:
    with pytest.raises(ConfigError, match="'blk\\*' matches no prunable layer"):
        _space(layers=["blk*"])


def test_suggested_recipe_covers_every_layer_on_the_grid() -> None:
    space = _space(
        amount={"min": 0.1, "max": 0.93, "step": 0.1},
        orders=["prune_qat"],
        granularities=["per_channel"],
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        recipe = space.suggest(trial)
        assert set(recipe.layers) == set(LAYERS)
        assert recipe.order == "prune_qat" and recipe.granularity == "per_channel"
        for spec in recipe.layers.values():
            assert 0.1 - 1e-9 <= spec.amount <= 0.9 + 1e-9
            assert abs(round((spec.amount - 0.1) / 0.1) * 0.1 + 0.1 - spec.amount) < 1e-6
        # The recipe maps back to exactly the parameters that produced it.
        assert space.params_of(recipe) == pytest.approx(trial.params)
        study.tell(trial, 0.0)
