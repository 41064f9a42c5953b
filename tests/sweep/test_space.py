import optuna
import pytest

from sweep import ConfigError, parse_config
from sweep._remote import describe_task
from sweep._space import Space, select_layers
from trials import CHANNEL_MULTIPLE, Recipe

LAYERS = ["stem", "block1.conv", "block1.dw", "block2.conv", "classifier"]


def _space(**search: object) -> Space:
    # tpe: the sampler for which amount_mode's default is relative (layerwise takes independent)
    config = parse_config({"name": "x", "task": "digits", "sampler": "tpe", "search_space": search})
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
        amount={"min": 0.1, "max": 0.9, "step": 0.1},
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
        # The recipe maps back to parameters that reproduce it (amount_mode relative: the
        # global level is reconstructed, so they need not be the very ones drawn).
        assert space.suggest(optuna.trial.FixedTrial(space.params_of(recipe))) == recipe
        study.tell(trial, 0.0)


# -- methods: per layer or global; unprunable layers only ever unstructured -----------------------
UNPRUNABLE = {"classifier": "its output channels are the model's output"}


def _method_space(**search: object) -> Space:
    # tpe: the sampler for which amount_mode's default is relative (layerwise takes independent)
    config = parse_config({"name": "x", "task": "digits", "sampler": "tpe", "search_space": search})
    prunable = {name: UNPRUNABLE.get(name) for name in LAYERS}
    return Space(tuple(LAYERS), config.search_space, config.trial, prunable)


def _sample(space: Space, n: int = 30) -> list[tuple[optuna.trial.Trial, Recipe]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    samples = []
    for _ in range(n):
        trial = study.ask()
        recipe = space.suggest(trial)
        assert space.suggest(optuna.trial.FixedTrial(space.params_of(recipe))) == recipe
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


def test_round_to_follows_the_runtime_unless_given() -> None:
    """Structured pruning keeps the channel counts ONNX Runtime runs fast (multiples of 4); a
    config that names round_to, even as 1, keeps it."""
    assert CHANNEL_MULTIPLE["onnxruntime"] == 4
    for trial, expected in (({}, 4), ({"finetune_epochs": 2}, 4), ({"round_to": 1}, 1)):
        config = parse_config({"name": "x", "task": "digits", "trial": trial})
        space = Space(tuple(LAYERS), config.search_space, config.trial)
        assert space.round_to == expected
        assert space.suggest(optuna.create_study().ask()).round_to == expected


def test_describe_task_reports_structured_prunable_layers() -> None:
    info = describe_task("digits", {})
    assert list(info.structured_prunable) == info.layers
    assert info.structured_prunable["fc"] == "its output channels are the model's output"
    assert all(info.structured_prunable[n] is None for n in ("conv1.0", "conv2.0", "conv3.0"))
    assert info.coupled == []  # a plain chain of convs couples no two layers


def test_describe_task_reports_the_layers_structured_pruning_couples() -> None:
    """A Transformer's q/k/v lose the same heads; every block's attention output and fc2 add
    into the residual stream, and lose the same channels (the head is the model's output)."""
    info = describe_task("transformer", {"width": 32, "depth": 2, "n_train": 500})
    attention = [[f"blocks.{b}.attention.{p}" for p in "qkv"] for b in range(2)]
    residual = [f"blocks.{b}.{name}" for b in range(2) for name in ("attention.out", "fc2")]
    assert sorted(info.coupled) == sorted([*attention, residual])


# -- amount modes, tie groups, constraints --------------------------------------------------------
def _round_trips(space: Space, n: int = 40) -> list[Recipe]:
    """Every suggested recipe maps back to params that reproduce it, within the distributions."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
    distributions = space.distributions()
    recipes = []
    for _ in range(n):
        trial = study.ask()
        recipe = space.suggest(trial)
        params = space.params_of(recipe)
        assert set(params) == set(distributions)
        for name, value in params.items():
            assert distributions[name]._contains(distributions[name].to_internal_repr(value))
        assert space.suggest(optuna.trial.FixedTrial(params)) == recipe
        recipes.append(recipe)
        study.tell(trial, 0.0)
    return recipes


def test_relative_amounts_stay_within_the_spread_of_one_level() -> None:
    space = _space(amount={"max": 0.9, "step": 0.05, "spread": 0.2})
    assert "level" in space.distributions()
    assert {n for n in space.distributions() if n.startswith("offset:")} == {
        f"offset:{name}" for name in LAYERS
    }
    for recipe in _round_trips(space):
        amounts = [spec.amount for spec in recipe.layers.values()]
        assert max(amounts) - min(amounts) <= 0.4 + 1e-9
        assert all(0.0 <= a <= 0.9 for a in amounts)


def test_independent_amounts_round_trip() -> None:
    space = _space(amount_mode="independent")
    assert "level" not in space.distributions()
    recipes = _round_trips(space)
    spreads = [max(s.amount for s in r.layers.values()) - min(s.amount for s in r.layers.values())
               for r in recipes]  # fmt: skip
    assert max(spreads) > 0.6  # free per-layer amounts: far apart


@pytest.mark.parametrize("mode", ["relative", "independent"])
def test_tied_layers_share_one_amount_parameter(mode: str) -> None:
    space = _space(amount_mode=mode, tie=[["block1.*", "block2.conv"]])
    prefix = "offset:" if mode == "relative" else "amount:"
    assert {n for n in space.distributions() if n.startswith(prefix)} == {
        prefix + name for name in ("stem", "block1.conv", "classifier")
    }
    for recipe in _round_trips(space):
        tied = {recipe.layer(name).amount for name in ("block1.conv", "block1.dw", "block2.conv")}
        assert len(tied) == 1


@pytest.mark.parametrize(
    ("tie", "message"),
    [
        ([["nope*"]], "tie.0: pattern 'nope\\*' matches no searched layer"),
        ([["block1.*"], ["*.dw"]], "tie.1: layer 'block1.dw' is already in another tie group"),
    ],
)
def test_bad_tie_groups_are_config_errors(tie: list[list[str]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _space(tie=tie)


def test_constraint_values_from_layer_sizes() -> None:
    config = parse_config(
        {
            "name": "x",
            "task": "digits",
            "search_space": {
                "constraints": {"max_sparsity": 0.5, "min_sparsity": 0.2, "max_params": 500}
            },
        }
    )
    sizes = {"stem": 100, "block1.conv": 300, "block1.dw": 0, "block2.conv": 600, "classifier": 0}
    space = Space(
        tuple(LAYERS), config.search_space, config.trial, {}, layer_params=sizes, model_params=1200
    )
    recipe = Recipe.from_dict({"layers": {"stem": {"amount": 0.5}, "block2.conv": {"amount": 0.5}}})
    # 350 of 1000 weights pruned: sparsity 0.35, 850 parameters left of 1200.
    assert space.constraint_values(recipe) == pytest.approx(
        {"max_sparsity": -0.15, "min_sparsity": -0.15, "max_params": 350 / 1200}
    )
    with pytest.raises(ConfigError, match="min_sparsity must be <= max_sparsity"):
        parse_config(
            {"name": "x", "task": "digits",
             "search_space": {"constraints": {"min_sparsity": 0.6, "max_sparsity": 0.5}}}
        )  # fmt: skip


# -- orders: prune_dynamic searched by default where the model has Linear or LSTM layers ---------
def test_default_orders_follow_the_model_and_runtime_goes_into_the_recipe() -> None:
    config = parse_config({"name": "x", "task": "digits"})
    search, trial = config.search_space, config.trial
    convs = Space(tuple(LAYERS), search, trial, dynamic_layers=False)
    linear = Space(tuple(LAYERS), search, trial, dynamic_layers=True)
    assert convs.orders == ["prune_ptq", "prune_qat", "prune_float"]
    assert linear.orders == ["prune_ptq", "prune_qat", "prune_dynamic", "prune_float"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {linear.suggest(study.ask()).order for _ in range(40)}
    assert seen == set(linear.orders)
    assert linear.suggest(study.ask()).runtime == "onnxruntime"


def test_prune_dynamic_on_a_model_without_linear_layers_is_a_config_error() -> None:
    config = parse_config(
        {"name": "x", "task": "digits", "search_space": {"orders": ["prune_dynamic"]}}
    )
    with pytest.raises(ConfigError, match=r"^search_space.orders: prune_dynamic quantizes"):
        Space(tuple(LAYERS), config.search_space, config.trial, dynamic_layers=False)
