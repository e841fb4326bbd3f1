"""Request validation: types and the limits of :class:`~bertrt.options.RuntimeOptions`.

Every runner checks its inputs here before tokenizing anything, so a malformed or
oversized call fails fast with one InputError (a :class:`~bertrt.errors.LimitExceeded`
when it goes past a limit, naming the limit) instead of eating memory. Services that
queue requests (a batcher, an HTTP server) can call :func:`check_texts` at admission time
to refuse a request before it waits in line.

Example::

    options = RuntimeOptions(max_chars_per_text=2)
    check_texts(["a", "bb"], options)    # ['a', 'bb']
    check_texts(["a", "bbb"], options)   # InputError: Text #1 has 3 characters, more than
                                         # max_chars_per_text (2); shorten it or raise ...
"""

from __future__ import annotations

from collections.abc import Sequence

from bertrt.errors import InputError, LimitExceeded
from bertrt.options import RuntimeOptions


def as_texts(texts: str | Sequence[str], what: str = "text") -> list[str]:
    """``texts`` as a list of str: a single str becomes a list of one; anything that is not
    a str raises InputError naming its position.

    >>> as_texts("hello")
    ['hello']
    """
    if isinstance(texts, str):
        return [texts]
    # A list or tuple passes without the Sequence ABC check, the costlier one.
    plain_sequence = isinstance(texts, (list, tuple))
    if not plain_sequence and (isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence)):
        raise InputError(f"Expected a {what} string or a list of them, got {type(texts).__name__}.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(
                f"{what.capitalize()} #{index} is {type(text).__name__}, not str; pass strings only."
            )
    return list(texts)


def check_texts(
    texts: str | Sequence[str],
    options: RuntimeOptions,
    what: str = "text",
    max_chars: int | None = None,
    limit_name: str = "max_chars_per_text",
) -> list[str]:
    """``texts`` as a list of str, within ``options.max_texts_per_call`` items and
    ``max_chars`` characters each (``options.max_chars_per_text`` unless given; the
    message names ``limit_name``). Raises InputError (LimitExceeded for a limit) naming
    the first offender."""
    items = as_texts(texts, what)
    check_count(len(items), options, f"{what}s")
    limit = options.max_chars_per_text if max_chars is None else max_chars
    for index, text in enumerate(items):
        if len(text) > limit:
            raise LimitExceeded(
                f"{what.capitalize()} #{index} has {len(text):,} characters, more than", limit_name, limit, "shorten it"
            )
    return items


def check_count(count: int, options: RuntimeOptions, what: str = "texts") -> None:
    """LimitExceeded when one call carries more than ``options.max_texts_per_call`` items."""
    if count > options.max_texts_per_call:
        raise LimitExceeded(
            f"Got {count:,} {what} in one call, more than", "max_texts_per_call", options.max_texts_per_call,
            "split the request",
        )


def check_top_k(value: object, options: RuntimeOptions) -> int:
    """``value`` when it is an int from 1 to ``options.max_top_k``, else an InputError.

    >>> check_top_k(3, RuntimeOptions())
    3
    """
    top_k = check_positive(value, "top_k")
    if top_k > options.max_top_k:
        raise LimitExceeded(f"top_k {top_k:,} is more than", "max_top_k", options.max_top_k, "ask for fewer")
    return top_k


def check_positive(value: object, name: str) -> int:
    """``value`` when it is an int of 1 or more, else an InputError naming ``name``.

    >>> check_positive(3, "top_k")
    3
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}.")
    return value
