"""Joining a Ray cluster, shared by ``bertrt batch --engine ray`` and ``bertrt serve --engine ray``.

Imported only where Ray is used: ``ray`` itself is passed in, so importing this module never
imports Ray.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from bertrt.errors import ConfigError

# A Ray instance of the command's own: plain ray.init() would join any cluster that
# `ray start` left on this machine.
LOCAL = "local"


def ray_target(address: str | None) -> str:
    """The cluster to join: ``address``, else ``$RAY_ADDRESS``, else a local instance."""
    return address or os.environ.get("RAY_ADDRESS") or LOCAL


def init_ray(ray: Any, target: str) -> None:
    """``ray.init`` on ``target`` (a local instance gets no dashboard); a ConfigError in one
    sentence when the cluster cannot be joined."""
    own = {"include_dashboard": False} if target == LOCAL else {}
    try:
        ray.init(address=target, logging_level=logging.WARNING, **own)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"Cannot join the Ray cluster at {target} ({reason}); check --address, or start one with "
            "`ray start --head`."
        ) from None
