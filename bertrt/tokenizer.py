"""Fast tokenization from a model folder's ``tokenizer.json`` (the `tokenizers` library only).

:class:`TextTokenizer` truncates each text at the manifest's ``max_length`` (special
tokens included, as the export validated) and does not pad: :meth:`TextTokenizer.pad`
pads a batch to its longest member (with :func:`bertrt.feeds.pad_rows`, as every model
feed is built), so batching can group texts by length first.

Long texts cost no more than the window: only a head of ``max_length * 32`` characters is
tokenized first, and its encoding is kept when it already overflows the window *and* the
kept tokens end before the head's last (possibly cut) word. Tokenizers split text into
words before they split words into tokens, so cutting text after a word cannot change the
tokens of the words before it: the result is exactly the full text's. Otherwise (a head of
one giant word) the full text is tokenized. A 1 MB text thus costs the same as 8 KB,
instead of seconds and hundreds of MB of overflow pieces.

Thread safety: a `tokenizers.Tokenizer` is stateful (truncation/padding settings), and
reconfiguring it while another thread encodes is unsafe. This class configures its
tokenizer once, in ``__init__``, and afterwards only encodes, which many threads may do at
once. Code that must reconfigure per call (QA windowing) takes its own instance from
:meth:`TextTokenizer.fresh` and guards it.

Example::

    tok = TextTokenizer.from_dir(Path("models/minilm/embedder"), max_length=256)
    encodings = tok.encode(["I love Paris", "short"])
    batch = tok.pad(encodings)   # arrays of shape (2, longest)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Encoding as RawEncoding
from tokenizers import Tokenizer

from bertrt.errors import BundleError, InputError
from bertrt.feeds import TokenBatch, pad_rows, pad_token_id

TOKENIZER_FILE = "tokenizer.json"
# Head of a long text tokenized first, in characters per token of the window: generous for
# every script (English averages ~4.5 characters per WordPiece token, CJK one).
HEAD_CHARS_PER_TOKEN = 32


class Encoding:
    """One text's tokens, unpadded: ids and type ids (int64), token strings, and whether
    the text was cut at ``max_length`` (the window it was tokenized for).

    Only the ids are converted up front. The type ids and token strings are built on first
    use: a single request reads neither (its type ids are a shared row of zeros, see
    :meth:`TextTokenizer.feeds_one`), and right after a model run every conversion costs
    more than the few values it converts.
    """

    __slots__ = ("_raw", "_tokens", "_type_ids", "ids", "truncated")

    def __init__(self, raw: RawEncoding, max_length: int) -> None:
        self._raw = raw
        self._tokens: tuple[str, ...] | None = None
        self._type_ids: np.ndarray | None = None
        ids = raw.ids
        self.ids = np.array(ids, dtype=np.int64)
        # `overflowing` holds the cut-off pieces; there are none unless the window is full.
        self.truncated = len(ids) >= max_length and bool(raw.overflowing)

    @property
    def type_ids(self) -> np.ndarray:
        """The segment ids (int64), one per token."""
        if self._type_ids is None:
            self._type_ids = np.array(self._raw.type_ids, dtype=np.int64)
        return self._type_ids

    @property
    def tokens(self) -> tuple[str, ...]:
        """The token strings, special tokens included."""
        if self._tokens is None:
            self._tokens = tuple(self._raw.tokens)
        return self._tokens

    def __len__(self) -> int:
        return len(self.ids)


class TextTokenizer:
    """Truncating, non-padding tokenizer for single texts, configured once at construction.

    ``head_chars`` (default ``max_length * 32``) is how much of a long text is tokenized
    before the rest is considered (see the module notes); it changes speed, never results.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int, pad_id: int, head_chars: int | None = None) -> None:
        self.max_length = max_length
        self.pad_id = pad_id
        self.head_chars = head_chars or max_length * HEAD_CHARS_PER_TOKEN
        self._source = tokenizer.to_str()
        self._tokenizer = tokenizer
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)
        # Read-only rows of ones and zeros: a single text's attention mask is a view of the
        # ones, and so are its type ids of the zeros where the tokenizer gives a lone text
        # type id 0 throughout (its template gives every piece a fixed type id, so one probe
        # decides for every text).
        self._ones = _constant_row(1, max_length)
        self._zeros = _constant_row(0, max_length)
        self._single_types_zero = not any(self._tokenizer.encode("a").type_ids)

    @classmethod
    def from_dir(cls, model_dir: Path, max_length: int) -> TextTokenizer:
        """Load ``model_dir/tokenizer.json``; the pad id follows :func:`bertrt.feeds.pad_token_id`."""
        path = model_dir / TOKENIZER_FILE
        if not path.is_file():
            raise BundleError(
                f"{path} is missing, so the model cannot tokenize text; re-export the bundle "
                "with `bertrt export`."
            )
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception on a bad file
            raise BundleError(f"{path} cannot be loaded ({exc}); re-export the bundle.") from exc
        return cls(tokenizer, max_length, pad_token_id(tokenizer, model_dir))

    def fresh(self) -> Tokenizer:
        """A new, independent `tokenizers.Tokenizer` loaded from the same definition (for
        callers that reconfigure it per call)."""
        return Tokenizer.from_str(self._source)

    def encode(self, texts: Sequence[str]) -> list[Encoding]:
        """Tokenize ``texts`` (with special tokens), truncating each at ``max_length``."""
        if not texts:
            return []
        if len(texts) == 1:
            return [self.encode_one(texts[0])]
        encodings = self._tokenizer.encode_batch([text[: self.head_chars] for text in texts])
        undecided = [
            i for i, (text, e) in enumerate(zip(texts, encodings, strict=True))
            if len(text) > self.head_chars and not _head_decides(e)
        ]
        if undecided:
            full = self._tokenizer.encode_batch([texts[i] for i in undecided])
            for index, encoding in zip(undecided, full, strict=True):
                encodings[index] = encoding
        return [Encoding(e, self.max_length) for e in encodings]

    def encode_one(self, text: str) -> Encoding:
        """Tokenize one text as :meth:`encode` does. ``encode`` skips the batch call's hand-off
        to the library's worker threads, which costs a single request more than its
        tokenization."""
        encoding = self._tokenizer.encode(text[: self.head_chars])
        if len(text) > self.head_chars and not _head_decides(encoding):
            encoding = self._tokenizer.encode(text)
        return Encoding(encoding, self.max_length)

    def feeds_one(self, encoding: Encoding) -> dict[str, np.ndarray]:
        """The model feeds of one encoding, equal to ``pad([encoding]).feeds()``: views of its
        rows and of shared constant rows, nothing allocated."""
        width = len(encoding.ids)
        if width > self.max_length:  # not from this tokenizer, which never exceeds max_length
            return self.pad([encoding]).feeds()
        types = self._zeros[:, :width] if self._single_types_zero else encoding.type_ids.reshape(1, width)
        return {
            "input_ids": encoding.ids.reshape(1, width),
            "attention_mask": self._ones[:, :width],
            "token_type_ids": types,
        }

    def pad(self, encodings: Sequence[Encoding]) -> TokenBatch:
        """Pad ``encodings`` on the right to the longest of them."""
        if not encodings:
            raise InputError("Cannot pad an empty batch; pass at least one encoding.")
        return pad_rows([e.ids for e in encodings], self.pad_id, [e.type_ids for e in encodings])


def _constant_row(value: int, width: int) -> np.ndarray:
    row = np.full((1, width), value, dtype=np.int64)
    row.flags.writeable = False
    return row


def _head_decides(head: RawEncoding) -> bool:
    """Whether a text head's truncated encoding is the full text's: the head overflowed the
    window and its kept tokens all belong to words before the head's last word (the only
    one the cut can change). Word ids count words across the overflow pieces."""
    pieces = head.overflowing
    if not pieces:
        return False
    kept = [word for word in head.word_ids if word is not None]
    last = [word for word in pieces[-1].word_ids if word is not None]
    return bool(kept) and bool(last) and max(kept) < max(last)
