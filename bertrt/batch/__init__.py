"""Batch jobs: a task over every row of a file, into a JSONL or Parquet file, in input order.

The local engine (:func:`run_local`) streams the input in chunks and can resume an
interrupted job; the Ray engine (:mod:`bertrt.batch.ray_engine`, the ``ray`` extra) runs
the same job on a Ray cluster with Ray Data. Both write the same rows.

Example::

    from bertrt.batch import BatchJob, run_local
    report = run_local(BatchJob(Task.CLASSIFY, Path("reviews.csv"), Path("labels.parquet")), resume=True)
"""

from bertrt.batch.job import BatchJob, InputFormat, OutputFormat
from bertrt.batch.local import run_local
from bertrt.batch.sink import BatchReport
from bertrt.errors import BadRowError

__all__ = ["BadRowError", "BatchJob", "BatchReport", "InputFormat", "OutputFormat", "run_local"]
