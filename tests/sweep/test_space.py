import optuna
import pytest

from sweep import ConfigError, parse_config
from sweep._remote import describe_task
from sweep._space import Space, select_layers
from trials import Recipe

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


# -- methods: per layer or global; unprunable layers only ever unstructured -----------------------
UNPRUNABLE = {"classifier": "its output channels are the model's output"}


def _method_space(**search: object) -> Space:
    config = parse_config({"name": "x", "task": "digits", "search_space": search})
    prunable = {name: UNPRUNABLE.get(name) for name in LAYERS}
    return Space(tuple(LAYERS), config.search_space, config.trial, prunable)


def _sample(space: Space, n: int = 30) -> list[tuple[optuna.trial.Trial, Recipe]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    samples = []
    for _ in range(n):
        trial = study.ask()
        recipe = space.suggest(trial)
        assert space.params_of(recipe) == pytest.approx(trial.params)
        samples.append((trial, recipe))
        study.tell(trial, 0.0)
    return samples


def test_default_searches_both_methods_per_layer() -> None:
    space = _method_space()
    assert space.search.methods == ["unstructured", "structured"]
    assert space.search.method_scope == "per_layer"
    samples = _sample(space)
    params = set(samples[0][0].params)
    assert {p for p in params if p.startswith("method")} == {
        f"method:{name}" for name in LAYERS if name not in UNPRUNABLE
    }
    mixed = [{spec.method for spec in r.layers.values()} for _, r in samples]
    assert any(len(methods) == 2 for methods in mixed)
    for _, recipe in samples:
        assert recipe.layers["classifier"].method == "unstructured"


def test_global_scope_has_one_method_parameter() -> None:
    samples = _sample(_method_space(method_scope="global"))
    seen = set()
    for trial, recipe in samples:
        assert [p for p in trial.params if p.startswith("method")] == ["method"]
        chosen = trial.params["method"]
        seen.add(chosen)
        for name, spec in recipe.layers.items():
            expected = "unstructured" if name in UNPRUNABLE else chosen
            assert spec.method == expected, name
    assert seen == {"unstructured", "structured"}


def test_structured_only_leaves_unprunable_layers_unstructured() -> None:
    for scope in ("per_layer", "global"):
        space = _method_space(methods=["structured"], method_scope=scope)
        for trial, recipe in _sample(space, 5):
            assert not [p for p in trial.params if p.startswith("method")]
            assert recipe.layers["classifier"].method == "unstructured"
            assert {recipe.layers[n].method for n in LAYERS[:-1]} == {"structured"}


def test_unknown_method_scope_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"search_space\.method_scope"):
        parse_config({"name": "x", "task": "digits", "search_space": {"method_scope": "layer"}})


def test_round_to_reaches_the_recipe() -> None:
    config = parse_config({"name": "x", "task": "digits", "trial": {"round_to": 8}})
    space = Space(tuple(LAYERS), config.search_space, config.trial)
    study = optuna.create_study()
    assert space.suggest(study.ask()).round_to == 8
    with pytest.raises(ConfigError, match=r"trial\.round_to"):
        parse_config({"name": "x", "task": "digits", "trial": {"round_to": 0}})


def test_describe_task_reports_structured_prunable_layers() -> None:
    info = describe_task("digits", {})
    assert list(info.structured_prunable) == info.layers
    assert info.structured_prunable["fc"] == "its output channels are the model's output"
    assert all(info.structured_prunable[n] is None for n in ("conv1.0", "conv2.0", "conv3.0"))
