"""`bertrt serve --engine ray` on a real two-node Ray cluster (loopback): the replicas spread
over both nodes, and losing a node under load costs no wrong answer and no hung request.

The cluster runs in a child process (tests/ray_serve_cluster.py), apart from the session's
Ray instance; every process it starts carries a marker in its environment, so that all of
them, and no others, are stopped at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.serve")
from ray_processes import MARKER, processes_marked, stop  # noqa: E402

pytestmark = pytest.mark.ray
TESTS = Path(__file__).resolve().parent
DEADLINE_S = 600


@pytest.fixture(scope="module")
def cluster_run(tiny_bundle: Path) -> dict[str, Any]:
    """The child's report (see tests/ray_serve_cluster.py)."""
    temp = tempfile.mkdtemp(prefix="brt-cl-", dir="/tmp")  # short: Ray's socket paths must fit
    token = secrets.token_hex(16)
    env = {**os.environ, "RAY_TMPDIR": temp, MARKER: token}
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run(
            [sys.executable, str(TESTS / "ray_serve_cluster.py"), str(tiny_bundle)],
            capture_output=True,
            text=True,
            env=env,
            timeout=DEADLINE_S,
        )
    finally:
        left = stop(processes_marked(token))
        shutil.rmtree(temp, ignore_errors=True)
    assert not left, f"Ray processes outlived the cluster: {left}"
    assert done.returncode == 0, done.stderr[-4000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    report: dict[str, Any] = json.loads(line.removeprefix("REPORT "))
    return report


def test_two_replicas_run_on_two_nodes_and_share_the_requests(cluster_run: dict[str, Any]) -> None:
    spread = cluster_run["spread"]
    assert spread["ok"] == spread["requests"], "every request must get the library's answer"
    replicas = list(spread["replicas"].values())
    assert len(replicas) == 2 and replicas[0]["node"] != replicas[1]["node"]
    assert all(r["calls"] > 0 for r in replicas), f"both replicas should take requests: {replicas}"
    assert sum(r["calls"] for r in replicas) == spread["requests"]


def test_losing_a_node_gives_right_answers_or_a_clean_503_and_reschedules(cluster_run: dict[str, Any]) -> None:
    loss = cluster_run["loss"]
    responses = loss["responses"]
    kinds = Counter(
        "ok" if status == 200 and good else "503" if status == 503 and retry_after else f"bad:{status}:{good}"
        for status, retry_after, good, *_ in responses
    )
    assert set(kinds) <= {"ok", "503"}, f"wrong answers or unclean failures: {kinds}"
    assert kinds["ok"] > 0 and loss["clients_hung"] == 0
    assert max(response[3] for response in responses) < 60, "a request took too long"
    assert loss["victim"] != loss["ingress_node"]
    # Serve put the lost replica on the fresh node, beside the survivor.
    assert loss["rescheduled_after_s"] is not None
    assert loss["fresh_node"] in loss["nodes_after"] and loss["victim"] not in loss["nodes_after"]
    assert len(set(loss["nodes_after"])) == 2
