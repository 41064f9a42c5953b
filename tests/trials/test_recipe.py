import json

import pytest

from trials import LayerSpec, Recipe, RecipeError


def _recipe() -> Recipe:
    return Recipe(
        layers={"conv1.0": LayerSpec(0.25), "fc": LayerSpec(0.5, granularity="none")},
        order="prune_qat",
        granularity="per_channel",
        backend="x86",
        finetune_epochs=2,
        qat_epochs=3,
    )


def test_json_round_trip() -> None:
    recipe = _recipe()
    assert Recipe.from_json(recipe.to_json()) == Recipe.from_dict(recipe.to_dict())
    again = Recipe.from_json(recipe.to_json())
    assert again.to_dict() == recipe.to_dict()
    assert again.layer("conv1.0").granularity == "per_channel"
    assert again.layer("fc").granularity == "none"


def test_json_shape() -> None:
    data = json.loads(_recipe().to_json())
    assert data["schema_version"] == 2
    assert data["order"] == "prune_qat" and data["runtime"] == "onnxruntime"
    assert data["layers"]["conv1.0"] == {
        "amount": 0.25,
        "method": "unstructured",
        "granularity": "per_channel",
    }


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"order": "quantize_first"}, "order"),
        ({"granularity": "per_row"}, "granularity"),
        ({"backend": "tensorrt"}, "backend"),
        ({"runtime": "tensorrt"}, "runtime"),
        ({"layers": {"fc": {"amount": 1.0}}}, "layers.fc.amount"),
        ({"layers": {"fc": {"amount": -0.1}}}, "layers.fc.amount"),
        ({"layers": {"fc": {"amount": 0.1, "methd": "x"}}}, "layers.fc.methd"),
        ({"layers": {"fc": {"amount": 0.1, "method": "random"}}}, "layers.fc.method"),
        ({"odrer": "prune_ptq"}, "odrer"),
        ({"schema_version": 99}, "schema_version"),
        ({"calibration_batches": 0}, "calibration_batches"),
    ],
)
def test_bad_recipes_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(RecipeError, match=f"^{field}"):
        Recipe.from_dict(data)


def test_not_json() -> None:
    with pytest.raises(RecipeError, match="not valid JSON"):
        Recipe.from_json("{oops")


def test_unknown_layer_is_named() -> None:
    recipe = Recipe(layers={"conv9": LayerSpec(0.5)})
    with pytest.raises(RecipeError, match="'conv9' is not a prunable layer"):
        recipe.check_layers(["conv1", "fc"])


def test_a_schema_1_recipe_reads_as_an_onnxruntime_recipe() -> None:
    """Recipes written before ``runtime`` existed (and before prune_dynamic) still apply."""
    old = {
        "schema_version": 1,
        "order": "prune_qat",
        "granularity": "per_channel",
        "backend": "x86",
        "finetune_epochs": 1,
        "qat_epochs": 2,
        "calibration_batches": 8,
        "learning_rate": 0.001,
        "round_to": 1,
        "layers": {"fc": {"amount": 0.5, "method": "unstructured", "granularity": "per_tensor"}},
    }
    recipe = Recipe.from_dict(old)
    assert (recipe.runtime, recipe.order, recipe.backend, recipe.qat_epochs) == (
        "onnxruntime",
        "prune_qat",
        "x86",
        2,
    )
    assert recipe.layer("fc") == LayerSpec(0.5, "unstructured", "per_tensor")
