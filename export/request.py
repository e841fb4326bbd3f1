"""What `bertrt export` is asked for, as one object, and the one call that carries it out.

The command line names a recipe (by name or path), overrides some of its training settings
and says what to write where; :func:`run_export` turns that into a :class:`Recipe` and
:class:`ExportOptions` and builds the bundle.

Example::

    request = ExportRequest(recipe="minilm", out=Path("/tmp/minilm"), classifier_training={"train_size": 200})
    summary = run_export(request)
    summary.out    # Path('/tmp/minilm')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bertrt.export.pipeline import ExportOptions, ExportSummary, Log, export_bundle
from bertrt.export.recipe import load_recipe
from bertrt.export.squad import check_squad_source

from bertrt.errors import ConfigError
from bertrt.types import Precision


@dataclass(frozen=True)
class ExportRequest:
    """A recipe, the training settings to change in it, and the bundle to write.

    ``recipe`` is a recipe name (``minilm``, ``bert-base``) or a ``.toml`` path. ``out``
    defaults to ``models/<recipe name>``. ``classifier_training`` and ``qa_training``
    override fields of the recipe's ``[classifier.training]`` and ``[qa.training]``
    tables; None values keep the recipe's. ``strict`` writes no bundle unless every variant
    passes its check.
    """

    recipe: str = "minilm"
    out: Path | None = None
    precisions: tuple[Precision, ...] = ExportOptions.precisions
    qa_data: str | Path | None = None
    qa_eval_data: str | Path | None = None
    classifier_training: Mapping[str, object] = field(default_factory=dict)
    qa_training: Mapping[str, object] = field(default_factory=dict)
    strict: bool = False


def run_export(request: ExportRequest, log: Log = print) -> ExportSummary:
    """Load the requested recipe with its overrides, check the QA data sources (files,
    ``save_to_disk`` folders or hub ids), and build the bundle (see
    :func:`~bertrt.export.pipeline.export_bundle`)."""
    recipe = load_recipe(request.recipe).with_overrides(
        classifier=dict(request.classifier_training), qa=dict(request.qa_training)
    )
    for source, option in ((request.qa_data, "--qa-data"), (request.qa_eval_data, "--qa-eval-data")):
        if source is not None:
            try:
                check_squad_source(source)
            except ConfigError as exc:
                raise ConfigError(f"{option}: {exc}") from None
    options = ExportOptions(
        out=request.out or Path("models") / recipe.name,
        precisions=tuple(dict.fromkeys(request.precisions)),
        qa_data=request.qa_data,
        qa_eval_data=request.qa_eval_data,
        strict=request.strict,
    )
    return export_bundle(recipe, options, log)
