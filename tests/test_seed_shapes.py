"""The seed-shape check's own logic (its exports take tens of minutes and never run here):
the recipe it writes is the shipped bert-base recipe with local sources and no training, and
what it reads back from a bundle."""

from __future__ import annotations

from pathlib import Path

from bertrt.types import Precision


def test_the_seed_recipe_is_the_bert_base_recipe_on_local_folders(tmp_path: Path) -> None:
    from bertrt.bench.seed_shapes import seed_recipe
    from bertrt.export.recipe import load_recipe

    sources = {"bert-base": tmp_path / "base", "bert-large": tmp_path / "large"}
    for folder in sources.values():
        folder.mkdir()
    recipe_file = tmp_path / "seed.toml"
    recipe_file.write_text(seed_recipe(sources, ("embedder", "classifier", "qa")))
    recipe, shipped = load_recipe(str(recipe_file)), load_recipe("bert-base")
    assert {name: model.source for name, model in recipe.models.items()} == {
        "embedder": str(sources["bert-base"].resolve()),
        "classifier": str(sources["bert-base"].resolve()),
        "qa": str(sources["bert-large"].resolve()),
    }
    assert all(model.finetune is False for model in recipe.models.values())
    assert recipe.max_length == shipped.max_length and recipe.training["qa"] == shipped.training["qa"]
    recipe_file.write_text(seed_recipe(sources, ("qa",)))
    assert list(load_recipe(str(recipe_file)).models) == ["qa"]


def test_describe_bundle_reads_stages_sizes_and_validation(tiny_bundle: Path) -> None:
    from bertrt.bench.seed_shapes import describe_bundle

    models = describe_bundle(tiny_bundle)
    assert set(models) == {"embedder", "classifier", "qa"}
    qa = models["qa"]
    assert qa["trained"] is False and qa["peak_rss_mib"]["fp32 build"] > 0
    fp32 = qa["variants"][Precision.FP32.value]
    assert fp32["passed"] is True and fp32["bytes"] > 0 and "min_cosine_hidden" in fp32
