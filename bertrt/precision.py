"""Which variant of a model serves: the one asked for, or, with ``auto``, the fastest whose
recorded validation meets its task's budget on this device.

``auto`` reads only what the bundle records, and creates no session:

* on a CUDA GPU, fp16 when its validation ran on a GPU and passed (the fp16 tolerance of
  the export: max abs difference 1e-2, identical labels and spans); fp32 otherwise;
* on the CPU, int8 when its export check passed *and* a task-level evaluation recorded with
  ``bertrt eval --record`` meets the task's budget below on every data set it covers, with
  at least :data:`MIN_EVALUATED` examples each, for the very file the manifest lists; fp32
  otherwise.

Why an evaluation and not the export's own int8 check: that check runs on a dozen built-in
samples, which can show a broken file but cannot show a 98.5% agreement rate (one
disagreement in twelve is 91.7%; twelve agreements bound nothing). The budgets are about
real evaluation sets, so ``auto`` serves int8 only on evidence of that size, and otherwise
says which command records it.

The budgets (int8 against PyTorch, per task):

==========  ==============================  =========================================
task        figure                          budget
==========  ==============================  =========================================
classify    label agreement                 :data:`INT8_LABEL_AGREEMENT` (98.5%)
qa          answer agreement (same text)    :data:`INT8_ANSWER_AGREEMENT` (95%)
embed       pooler cosine, 1st percentile   :data:`INT8_POOLER_COSINE` (0.98)
==========  ==============================  =========================================

Each task's row in :data:`bertrt.tasks.TASKS` names its budget.

Example::

    choice = choose_variant(manifest, PrecisionChoice.AUTO, Device.CPU, CLASSIFY_BUDGET)
    choice.precision, choice.reason   # (Precision.INT8, 'auto: int8 label agreement ...')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bertrt.manifest import ModelManifest, Variant
from bertrt.providers import cuda_failure
from bertrt.types import Device, Precision, PrecisionChoice

# int8 budgets: how close an int8 file's task results must stay to PyTorch's.
INT8_LABEL_AGREEMENT = 0.985
INT8_ANSWER_AGREEMENT = 0.95
INT8_POOLER_COSINE = 0.98
# The fewest examples per evaluated data set that can show a budget is met.
MIN_EVALUATED = 200


@dataclass(frozen=True)
class Budget:
    """What an int8 file's recorded evaluation must show for ``auto`` to serve it.

    ``metric`` is the figure's key in an evaluation record, ``floor`` its least value,
    ``what`` its name in words, and ``command`` the `bertrt eval` call that records it.
    """

    metric: str
    floor: float
    what: str
    command: str
    percent: bool = True

    def format(self, value: float) -> str:
        """``value`` as the reason prints it: a share in percent, a cosine as a number."""
        return f"{value:.2%}" if self.percent else f"{value:.4f}"


CLASSIFY_BUDGET = Budget(
    "label_agreement", INT8_LABEL_AGREEMENT, "label agreement", "bertrt eval --task classify --record"
)
QA_BUDGET = Budget(
    "answer_agreement", INT8_ANSWER_AGREEMENT, "answer agreement", "bertrt eval --task qa --data SQUAD --record"
)
EMBED_BUDGET = Budget(
    "pooler_cosine_p1", INT8_POOLER_COSINE, "pooler cosine (1st percentile)", "bertrt eval --task embed --record",
    percent=False,
)


@dataclass(frozen=True)
class VariantChoice:
    """The variant that serves a model (``precision``), what was asked for, and why."""

    precision: Precision
    requested: PrecisionChoice
    reason: str

    def to_dict(self) -> dict[str, str]:
        """``{"precision", "requested", "reason"}`` as JSON-ready strings."""
        return {"precision": self.precision.value, "requested": self.requested.value, "reason": self.reason}


def choose_variant(
    manifest: ModelManifest, requested: PrecisionChoice, device: Device, budget: Budget | None
) -> VariantChoice:
    """The variant of ``manifest``'s model that serves when ``requested`` is asked for on
    ``device``; ``budget`` is the task's int8 budget (None: the task has none, so auto never
    picks int8). A concrete request is returned as is (opening the file says if it is missing).
    """
    if requested is not PrecisionChoice.AUTO:
        precision = Precision(requested.value)
        return VariantChoice(precision, requested, f"{precision.value} was asked for")
    target = target_device(device)
    if target is Device.CUDA:
        faster, verdict = Precision.FP16, _fp16_verdict(manifest.variants.get(Precision.FP16))
    else:
        faster, verdict = Precision.INT8, _int8_verdict(manifest, budget)
    precision = faster if verdict.qualifies else Precision.FP32
    return VariantChoice(precision, requested, f"auto on {target.value}: {verdict.why}, so {precision.value} serves")


def target_device(device: Device) -> Device:
    """Where a session for ``device`` will run: CPU or CUDA (``auto`` asks the CUDA probe)."""
    if device is Device.AUTO:
        return Device.CUDA if cuda_failure() is None else Device.CPU
    return device


@dataclass(frozen=True)
class _Verdict:
    """Whether the faster variant qualifies, and the evidence in words."""

    qualifies: bool
    why: str


def _fp16_verdict(variant: Variant | None) -> _Verdict:
    if variant is None:
        return _Verdict(False, "the model has no fp16 variant")
    report = variant.validation
    if not report.get("ran") or report.get("device") != Device.CUDA.value:
        return _Verdict(False, f"fp16 has no GPU validation ({report.get('reason', 'it did not run on a GPU')})")
    if report.get("passed") is not True:
        failures = "; ".join(report.get("failures", [])) or "it did not pass"
        return _Verdict(False, f"fp16 failed its GPU validation ({failures})")
    return _Verdict(True, "fp16 passed its GPU validation")


def _int8_verdict(manifest: ModelManifest, budget: Budget | None) -> _Verdict:
    variant = manifest.variants.get(Precision.INT8)
    if variant is None:
        return _Verdict(False, "the model has no int8 variant")
    if budget is None:
        return _Verdict(False, f"the {manifest.task} task has no int8 budget")
    if variant.validation.get("passed") is not True:
        failures = "; ".join(variant.validation.get("failures", [])) or "it did not pass"
        return _Verdict(False, f"int8 failed its export check ({failures})")
    records = current_records(variant, manifest.files.get(variant.file))
    if not records:
        stale = " of the current file" if variant.evaluation else ""
        return _Verdict(
            False,
            f"int8 has no recorded evaluation on real data{stale} (its export check covers only built-in "
            f"samples); `{budget.command}` records one",
        )
    return _budget_verdict(records, budget)


def current_records(variant: Variant, sha256: str | None) -> dict[str, Mapping[str, Any]]:
    """The variant's evaluation records made on the file the manifest lists now (a record
    carries the sha256 of the file it evaluated)."""
    return {
        name: record
        for name, record in variant.evaluation.items()
        if isinstance(record, Mapping) and sha256 is not None and record.get("sha256") == sha256
    }


def _budget_verdict(records: Mapping[str, Mapping[str, Any]], budget: Budget) -> _Verdict:
    figures, short, below = [], [], []
    for name, record in records.items():
        count = int(record.get("count", 0))
        value = record.get(budget.metric)
        if not isinstance(value, int | float):
            return _Verdict(False, f"int8's evaluation on {name} records no {budget.what}; `{budget.command}` does")
        figures.append(f"{budget.format(value)} on {count:,} examples of {name}")
        short += [name] if count < MIN_EVALUATED else []
        below += [name] if value < budget.floor else []
    measured = f"int8 {budget.what} {', '.join(figures)}"
    floor = budget.format(budget.floor)
    if below:
        return _Verdict(False, f"{measured}, below the budget of {floor}")
    if short:
        return _Verdict(
            False,
            f"{measured}: too few examples to show the budget of {floor} (at least {MIN_EVALUATED} per data set; "
            f"`{budget.command}` without --limit)",
        )
    return _Verdict(True, f"{measured}, within the budget of {floor}")
