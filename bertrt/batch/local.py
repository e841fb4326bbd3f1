"""The local engine: one process reads the input in chunks, runs each chunk through the
runner and commits its results, so memory stays that of one chunk whatever the file size.

Example::

    report = run_local(BatchJob(Task.EMBED, Path("docs.jsonl"), Path("vectors.parquet")), resume=True)
    report.rows, report.bad_rows, report.rows_per_second
"""

from __future__ import annotations

from bertrt.batch.job import BatchJob
from bertrt.batch.predict import Predictor
from bertrt.batch.readers import check_input, count_rows, read_chunks
from bertrt.batch.sink import BatchReport, Progress, ResultSink
from bertrt.batch.state import JobFolder
from bertrt.errors import InputError
from bertrt.options import RuntimeOptions


def run_local(
    job: BatchJob,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    options: RuntimeOptions | None = None,
) -> BatchReport:
    """Run ``job`` in this process and write its output; returns what it did.

    With ``resume``, an interrupted run of the same job continues after its last committed
    chunk (a job with nothing to resume starts afresh). An interruption (Ctrl-C, a crash,
    kill -9) leaves the job's partial folder for a resume; a bad row under ``job.strict``
    stops the job and leaves nothing behind. ``progress(done, total)`` is called after
    every chunk; ``options`` tune the runner (threads, batch size).
    """
    check_input(job)
    total = count_rows(job)
    folder = JobFolder.open(job, resume=resume, overwrite=overwrite)
    if folder.finished:
        return BatchReport(job.output, "local", rows=total, resumed_rows=total)
    try:
        predictor = None
        if folder.done_rows < total:  # a resumed job may only have its parts left to join
            predictor = Predictor(job, options)
        sink = ResultSink(folder, total, "local", progress)
        if predictor is not None:
            for rows in read_chunks(job, skip=folder.done_rows):
                sink.add(predictor(rows))
        return sink.close()
    except BaseException as exc:
        # Nothing worth resuming (no part yet), or an input that must change before a rerun
        # (a bad row under strict, a file unreadable or changed mid-job): leave nothing.
        if not folder.parts or isinstance(exc, InputError):
            folder.discard()
        raise
