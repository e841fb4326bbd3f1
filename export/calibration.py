"""Real texts that fix the int8 activation scales, kept apart from every evaluation set.

Sentence models calibrate on IMDB reviews from the classifier's training sample (never on
the held-out reviews or Rotten Tomatoes sentences that `bertrt eval` scores); the QA model on
the first questions of its training data, or on the built-in pairs when it has none.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from bertrt.export import samples
from bertrt.export.recipe import ClassifierTraining, Recipe
from bertrt.export.variants import CalibrationText

from bertrt.tasks import Head, task_spec

CALIBRATION_SIZE = 64


def calibration_texts(
    task: str, recipe: Recipe, qa_data: str | Path | None, sentiment_csv: Path | None
) -> list[CalibrationText]:
    """Up to :data:`CALIBRATION_SIZE` texts (question/context pairs for QA) for ``task``;
    ``qa_data`` is any SQuAD source :func:`~bertrt.export.squad.load_squad` reads."""
    if task_spec(task).head is Head.SPAN:
        if qa_data is None:
            return list(samples.QA_PAIRS)
        from bertrt.export.squad import load_squad

        return [(e.question, e.context) for e in load_squad(qa_data, limit=CALIBRATION_SIZE)]
    return list(_training_reviews(recipe.classifier_training, sentiment_csv))


@lru_cache(maxsize=2)
def _training_reviews(cfg: ClassifierTraining, csv_path: Path | None) -> tuple[str, ...]:
    from bertrt.export.data import load_sentiment

    train = load_sentiment(cfg, csv_path).train
    return tuple(train.select(range(min(CALIBRATION_SIZE, len(train))))["text"])
