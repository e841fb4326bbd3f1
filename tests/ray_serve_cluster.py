"""Serve the classifier on a two-node Ray cluster, then lose one node under load.

Started by tests/test_serve_ray_cluster.py in its own process (its cluster must not meet the
test session's Ray instance): ``python tests/ray_serve_cluster.py BUNDLE``. Everything runs
on loopback: a head node with no CPUs (Serve's controller and HTTP proxy) and two worker
nodes of one CPU each, so the two classify replicas (one CPU each) must land on both.

1. **Spread.** Requests go through HTTP; then each replica says, through its handle, which
   node it runs on and how many requests it took.
2. **Loss.** Clients keep sending requests while the node of one replica (not the one
   running the ingress) is killed; a fresh one-CPU node is added and the clients go on until
   Serve has rescheduled the lost replica there, and a little after.

Prints one line, ``REPORT`` and JSON: what happened, and every response of the loss phase
as ``[status, retry_after, correct, seconds]``; the test judges it.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve
from ray.cluster_utils import Cluster

import bertrt
from bertrt.batcher import BatcherOptions
from bertrt.serve import ServeConfig
from bertrt.serve.ray_app import build_application
from bertrt.serve.ray_engine import APP_NAME, RayServeOptions, resolve_config
from bertrt.types import Device, Task

NODE = {"node_ip_address": "127.0.0.1", "num_cpus": 1}
# A killed node is declared dead after about 3 s instead of Ray's default of a minute.
HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}
CLIENTS = 3
REQUEST_TIMEOUT_S = 60
TEXTS = [f"review number {i}: the film was {'good' if i % 2 else 'bad'}" for i in range(40)]


def main(bundle: Path) -> None:
    head_args = {**NODE, "num_cpus": 0, "include_dashboard": False, "_system_config": HEALTH_CHECKS}
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    workers = [cluster.add_node(**NODE) for _ in range(2)]
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        url = start_serve()
        config = ServeConfig(models=bundle, device=Device.CPU, tasks=(Task.CLASSIFY,), batching=BatcherOptions())
        app = build_application(resolve_config(config), RayServeOptions(replicas=2, replica_cpus=1))
        serve.run(app, name=APP_NAME, route_prefix="/")
        expected = expected_labels(bundle)
        report: dict[str, Any] = {"spread": spread(url, expected)}
        report["loss"] = lose_a_node(cluster, workers, url, expected)
        print("REPORT " + json.dumps(report))
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def start_serve() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # One proxy, on the head: the nodes share one address, so one proxy per node would clash.
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    return f"http://127.0.0.1:{port}"


def expected_labels(bundle: Path) -> dict[str, list[float]]:
    """Each text's class probabilities, from the library in this process."""
    results = bertrt.load(bundle, device="cpu").classifier(TEXTS)
    return {text: [round(p, 5) for p in r.probabilities.values()] for text, r in zip(TEXTS, results, strict=True)}


def correct(text: str, body: dict[str, Any], expected: dict[str, list[float]]) -> bool:
    [result] = body["results"]
    return [round(p, 5) for p in result["probabilities"].values()] == expected[text]


def replicas() -> dict[str, Any]:
    """Each running classify replica's self-description, by replica id (asked through the
    handle until two have answered, or for 20 seconds)."""
    handle = serve.get_deployment_handle("classify", app_name=APP_NAME)
    found: dict[str, Any] = {}
    deadline = time.monotonic() + 20
    while len(found) < 2 and time.monotonic() < deadline:
        try:
            info = handle.describe.remote().result(timeout_s=30)
        except Exception:  # a replica lost with its node; ask again
            time.sleep(0.1)
            continue
        found[info.replica] = info
    return found


def spread(url: str, expected: dict[str, list[float]]) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as http:
        answers = [http.post("/classify", json={"texts": text}) for text in TEXTS]
    found = replicas()
    return {
        "requests": len(TEXTS),
        "ok": sum(r.status_code == 200 and correct(t, r.json(), expected) for t, r in zip(TEXTS, answers, strict=True)),
        "replicas": {tag: {"node": info.node_id, "calls": info.calls} for tag, info in found.items()},
    }


def lose_a_node(cluster: Cluster, workers: list[Any], url: str, expected: dict[str, list[float]]) -> dict[str, Any]:
    ingress_node = serve.get_deployment_handle("ingress", app_name=APP_NAME).node_id.remote().result(timeout_s=30)
    nodes = {info.node_id for info in replicas().values()}
    victim = next(node for node in workers if node.node_id in nodes and node.node_id != ingress_node)
    responses: list[list[Any]] = []
    stop = threading.Event()
    clients = [threading.Thread(target=send_until, args=(url, expected, stop, responses, n)) for n in range(CLIENTS)]
    for client in clients:
        client.start()
    started = time.monotonic()
    time.sleep(2)
    cluster.remove_node(victim, allow_graceful=False)
    removed_at = time.monotonic() - started
    time.sleep(10)  # requests meet one replica gone, and Ray declares its node dead
    fresh = cluster.add_node(**NODE)
    rescheduled_at = wait_for_replica_on(fresh.node_id, deadline_s=180)
    time.sleep(3)  # and requests reach the rescheduled replica
    stop.set()
    for client in clients:
        client.join(REQUEST_TIMEOUT_S + 10)
    return {
        "victim": victim.node_id,
        "ingress_node": ingress_node,
        "fresh_node": fresh.node_id,
        "removed_at_s": round(removed_at, 1),
        "rescheduled_after_s": None if rescheduled_at is None else round(rescheduled_at - started - removed_at, 1),
        "nodes_after": sorted(info.node_id for info in replicas().values()),
        "replica_states": dict(serve.status().applications[APP_NAME].deployments["classify"].replica_states),
        "clients_hung": sum(client.is_alive() for client in clients),
        "responses": responses,
    }


def send_until(
    url: str, expected: dict[str, list[float]], stop: threading.Event, responses: list[list[Any]], offset: int
) -> None:
    """One client sending classify requests back to back until ``stop``; records each
    response as [status, Retry-After, correct, seconds] (status 0: no HTTP answer)."""
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as http:
        n = offset
        while not stop.is_set():
            text = TEXTS[n % len(TEXTS)]
            n += CLIENTS
            sent = time.monotonic()
            try:
                answer = http.post("/classify", json={"texts": text})
            except httpx.HTTPError as exc:
                responses.append([0, None, False, round(time.monotonic() - sent, 2), type(exc).__name__])
                continue
            good = answer.status_code == 200 and correct(text, answer.json(), expected)
            seconds = round(time.monotonic() - sent, 2)
            responses.append([answer.status_code, answer.headers.get("retry-after"), good, seconds])


def wait_for_replica_on(node_id: str, deadline_s: float) -> float | None:
    """When (monotonic) a running classify replica answered from ``node_id``; None if none
    did within ``deadline_s`` seconds."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        status = serve.status().applications[APP_NAME].deployments["classify"]
        if status.replica_states.get("RUNNING") == 2 and node_id in {i.node_id for i in replicas().values()}:
            return time.monotonic()
        time.sleep(1)
    return None


if __name__ == "__main__":
    main(Path(sys.argv[1]))
