"""The app on the test session's Ray Serve (the ``ray_serve`` fixture), one at a time."""

from __future__ import annotations

from typing import Any

from ray import serve
from serving import wait_until_ready

from bertrt.serve import ServeConfig
from bertrt.serve.ray_app import build_application
from bertrt.serve.ray_engine import APP_NAME, RayServeOptions, resolve_config

# Three task deployments at half a CPU each fit the session's 2 CPUs (the ingress takes none).
TEST_OPTIONS = RayServeOptions(replica_cpus=0.5)


class RayApp:
    """``config`` deployed as the bertrt app on the session's Serve, ready on ``url`` inside
    the block, deleted after it."""

    def __init__(self, url: str, config: ServeConfig, options: RayServeOptions = TEST_OPTIONS) -> None:
        self.url = url
        self.config = resolve_config(config)
        self.options = options

    def __enter__(self) -> RayApp:
        serve.run(build_application(self.config, self.options), name=APP_NAME, route_prefix="/")
        wait_until_ready(self.url)
        return self

    def __exit__(self, *exc_info: object) -> None:
        serve.delete(APP_NAME)

    def handle(self, deployment: str) -> Any:
        """A handle on one of the app's deployments (``classify``, ``ingress``...)."""
        return serve.get_deployment_handle(deployment, app_name=APP_NAME)
