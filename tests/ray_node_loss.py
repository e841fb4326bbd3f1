"""Run a batch job on a two-node Ray cluster and remove the worker node mid-run.

Started by tests/test_batch_ray.py in its own process (its cluster must not meet the test
session's Ray instance): ``python tests/ray_node_loss.py BUNDLE INPUT OUTPUT RESULT``, with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` so that both nodes listen on loopback only. Prints
the job's report and what happened to the node to RESULT (JSON); the test checks the output.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from bertrt.batch import BatchJob
from bertrt.batch.ray_engine import RayOptions, run_ray
from bertrt.types import Device, Task

ONE_CPU = {"num_cpus": 1}


def main(bundle: Path, source: Path, output: Path, result: Path) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={**ONE_CPU, "include_dashboard": False})
    worker = cluster.add_node(**ONE_CPU)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        removed: dict[str, float] = {}
        started = time.monotonic()

        def lose_the_worker(done: int, total: int) -> None:
            # Once results flow, both actors (one per node) are busy and most rows are still to come.
            if done > 0 and not removed:
                removed["rows_done"] = done
                removed["rows_total"] = total
                cluster.remove_node(worker, allow_graceful=False)
                removed["seconds"] = round(time.monotonic() - started, 1)

        job = BatchJob(Task.CLASSIFY, source, output, models=bundle, device=Device.CPU, id_column="id", chunk_rows=25)
        report = run_ray(job, RayOptions(actors=2), progress=lose_the_worker)
        alive = len([node for node in ray.nodes() if node["Alive"]])
        result.write_text(json.dumps({"rows": report.rows, "removed": removed, "alive_nodes": alive}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*(Path(arg) for arg in sys.argv[1:5]))
