"""Vocabularies: raw ids <-> contiguous indices, index 0 reserved for unknown.

Stored as Parquet (``index``, ``id`` and extra columns) so that a model directory is plain
data: nothing is unpickled to load it.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ncf.data.schema import id_text
from ncf.data.timeline import positions_in

UNKNOWN_INDEX = 0
FIRST_TS = "first_ts"  # extra column: epoch seconds of the first purchase of each id
FEW_IDS = 1_000  # up to this many ids per call, lookups binary-search a sorted copy, not hash the vocabulary
TEXT_LOOKUP_BYTES = 2 * 2**30  # the most a sorted fixed-width copy of text ids may take (10M ids of 200 bytes)


def _as_text(raw, integer_ids: bool) -> str:
    """A raw id as the vocabulary compares it: for integer ids, a whole float (``12.0``, a pandas
    int column with a gap) as the integer Arrow's cast writes (``12``), so that lists and Arrow
    arrays find the same ids."""
    if integer_ids and isinstance(raw, (float, np.floating)) and float(raw).is_integer():
        return str(int(raw))
    return str(raw)


def _lookup_text(raw, integer_ids: bool) -> Optional[str]:
    """A raw id a caller names as text to key it by, or None (unknown): no id, or text that is
    not UTF-8 (a lone surrogate), which no vocabulary holds."""
    if raw is None:
        return None
    text = _as_text(raw, integer_ids)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return text


def _indices_in(sorted_ids: Tuple[np.ndarray, np.ndarray], keys: np.ndarray) -> np.ndarray:
    """The vocabulary indices of ``keys`` (int64), the unknown index where absent, from a sorted
    copy of the ids and their positions (:meth:`Vocabulary.prepare_lookup`): O(keys) work and
    memory per call, none in the vocabulary's size."""
    ids, order = sorted_ids
    at = positions_in(ids, keys)
    if len(order) == 0:
        return np.full(len(keys), UNKNOWN_INDEX, np.int64)
    return np.where(at >= 0, order[at] + 1, UNKNOWN_INDEX).astype(np.int64)


@dataclass
class Vocabulary:
    """Raw ids (as strings) at indices 1..N; ``kind`` says whether raw ids were integers.

    Example::

        v = Vocabulary.from_ids(["b", "a"], kind="str")
        v.index_of(["a", "zzz"])  # array([2, 0])
        v.raw_of([1])  # ['b']
    """

    ids: pa.Array
    kind: str = "str"
    extra: Dict[str, pa.Array] = field(default_factory=dict)
    # Built on first use, for the few ids of an online request: the ids sorted (Arrow) and their
    # positions, binary-searched. Arrow's index_in hashes the whole vocabulary on every call, and
    # a Python dict of every id would cost gigabytes per process at 10M households.
    _sorted: Optional[Tuple[pa.Array, np.ndarray]] = field(default=None, init=False, repr=False, compare=False)
    # Integer ids as int64, sorted, and their positions (:meth:`prepare_lookup`): arrays of
    # integer ids, or of their text, are then found by binary search. Arrow's index_in hashes the
    # whole vocabulary on every call, 2.5-3.7 s against 10M ids whatever the size of the batch.
    _int_sorted: Optional[Tuple[np.ndarray, np.ndarray]] = field(default=None, init=False, repr=False, compare=False)
    # Text ids as fixed-width UTF-8 bytes, sorted, and their positions (:meth:`prepare_lookup`),
    # for the same reason: loyalty codes or UUIDs hashed per block cost 0.47 s a block at 2M ids.
    _text_sorted: Optional[Tuple[np.ndarray, np.ndarray]] = field(default=None, init=False, repr=False, compare=False)

    @staticmethod
    def from_ids(
        ids: Sequence[str] | pa.Array, kind: str = "str", extra: Dict[str, Sequence] | None = None
    ) -> "Vocabulary":
        array = pa.array(ids, pa.string()) if not isinstance(ids, pa.Array) else ids.cast(pa.string())
        if array.null_count:
            raise ValueError("vocabulary ids must not be null")
        if len(pc.unique(array)) != len(array):
            raise ValueError("vocabulary ids must be unique")
        return Vocabulary(array, kind, {k: pa.array(v) for k, v in (extra or {}).items()})

    def __len__(self) -> int:
        """Number of indices, the unknown one included (the embedding table size)."""
        return len(self.ids) + 1

    def index_of(self, raw: Sequence | pa.Array) -> np.ndarray:
        """Raw ids (any type; compared as strings) -> indices, 0 for unknown ids."""
        integer_ids = self.kind == "int"
        if not isinstance(raw, (pa.Array, pa.ChunkedArray)):
            # Ids a caller names (a question to Serve, a list of households) are keyed as ingest
            # keyed the log's; arrays are a validated log's own.
            raw = id_text(pa.array([_lookup_text(r, integer_ids) for r in raw], pa.string()))
            if len(raw) <= FEW_IDS:
                found = [UNKNOWN_INDEX if r is None else self._find(r) for r in raw.to_pylist()]
                return np.array(found, dtype=np.int64)
        if self._text_sorted is not None and isinstance(raw, (pa.Array, pa.ChunkedArray)) and not raw.null_count:
            return self._text_positions(raw if raw.type == pa.string() else pc.cast(raw, pa.string()))
        if self._int_sorted is not None and isinstance(raw, (pa.Array, pa.ChunkedArray)) and not raw.null_count:
            if pa.types.is_signed_integer(raw.type):
                return _indices_in(self._int_sorted, raw.to_numpy().astype(np.int64, copy=False))
            if pa.types.is_string(raw.type):  # validated logs carry ids as text
                found = self._int_text_positions(raw)
                if found is not None:
                    return found
        array = raw
        if array.type != pa.string():
            array = pc.cast(array, pa.string())
        position = pc.index_in(array, value_set=self.ids)
        return pc.fill_null(pc.add(position, 1), UNKNOWN_INDEX).to_numpy(zero_copy_only=False).astype(np.int64)

    def prepare_lookup(self) -> "Vocabulary":
        """Sorts the vocabulary once, so that :meth:`index_of` finds arrays of ids by binary search
        instead of hashing every id on each call: integer ids (``kind`` int) as int64, finding
        arrays of integers or of their text; other ids as fixed-width UTF-8 bytes, where that
        copy stays under :data:`TEXT_LOOKUP_BYTES` and no id holds a NUL (which the width pads
        with). The sorted copy travels with the vocabulary when it is pickled (to Ray tasks:
        prepare it before sending it). Returns ``self``."""
        if self.kind == "int":
            self._prepare_int_lookup()
        else:
            self._prepare_text_lookup()
        return self

    def _prepare_int_lookup(self) -> None:
        if self._int_sorted is None:
            try:
                values = pc.cast(self.ids, pa.int64()).to_numpy()
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return  # ids an int64 cannot hold: the hash lookup for them
            order = np.argsort(values, kind="stable")
            self._int_sorted = (values[order], order)

    def _prepare_text_lookup(self) -> None:
        if self._text_sorted is not None or len(self.ids) == 0:
            return
        utf8 = pc.cast(self.ids, pa.binary())
        width = pc.max(pc.binary_length(utf8)).as_py() or 0
        if width == 0 or width * len(utf8) > TEXT_LOOKUP_BYTES or pc.any(pc.match_substring(self.ids, "\x00")).as_py():
            return  # the hash lookup for them
        values = utf8.to_numpy(zero_copy_only=False).astype(f"S{width}")
        order = np.argsort(values, kind="stable")
        self._text_sorted = (values[order], order)

    def _text_positions(self, raw) -> np.ndarray:
        """Indices of text ids (no nulls) by binary search; text longer than every id, or holding
        a NUL, is no id (the fixed width would cut or pad it into one)."""
        ids, _ = self._text_sorted
        if isinstance(raw, pa.ChunkedArray):
            raw = raw.combine_chunks() if raw.num_chunks else pa.array([], pa.string())
        utf8 = pc.cast(raw, pa.binary())
        fits = pc.and_(
            pc.less_equal(pc.binary_length(utf8), ids.dtype.itemsize), pc.invert(pc.match_substring(raw, "\x00"))
        )
        found = _indices_in(self._text_sorted, utf8.to_numpy(zero_copy_only=False).astype(ids.dtype))
        return np.where(fits.to_numpy(zero_copy_only=False), found, UNKNOWN_INDEX)

    def _int_text_positions(self, raw) -> Optional[np.ndarray]:
        """Indices of integer ids written as text; None when some text is no integer (the hash
        lookup then answers). Text that is an integer but not as the vocabulary writes it
        ("012", "+5") is no id of it."""
        try:
            values = pc.cast(raw, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        found = _indices_in(self._int_sorted, values.to_numpy().astype(np.int64, copy=False))
        written_so = pc.equal(pc.cast(values, pa.string()), raw).to_numpy(zero_copy_only=False)
        return np.where(written_so, found, UNKNOWN_INDEX).astype(np.int64)

    def raw_of(self, indices: Sequence[int] | np.ndarray) -> List:
        """Indices -> raw ids in their original type (None for the unknown index)."""
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):  # -1 is "none found" elsewhere: never an id
            raise IndexError(f"indices {idx.min()}..{idx.max()} outside the vocabulary's 0..{len(self) - 1}")
        if len(self.ids) == 0:  # a log without a catalog has no departments or categories: all unknown
            return [None] * len(idx)
        strings = self.ids.take(pa.array(np.maximum(idx - 1, 0))).to_pylist()
        return [None if i == UNKNOWN_INDEX else s for i, s in zip(idx.tolist(), self._converted(strings))]

    def _sorted_ids(self) -> Tuple[pa.Array, np.ndarray]:
        if self._sorted is None:
            order = pc.sort_indices(self.ids).to_numpy()
            self._sorted = (self.ids.take(pa.array(order)), order)
        return self._sorted

    def _find(self, key: str) -> int:
        ids, order = self._sorted_ids()
        position = bisect.bisect_left(_Strings(ids), key)
        if position < len(ids) and ids[position].as_py() == key:
            return int(order[position]) + 1
        return UNKNOWN_INDEX

    def with_prefix(self, prefix: str, limit: int) -> List:
        """Up to ``limit`` raw ids whose string form starts with ``prefix``, in string order (a
        binary search: no scan of the vocabulary).

        Example::

            Vocabulary.from_ids(["12", "2", "120"], kind="int").with_prefix("12", 5)  # [12, 120]
        """
        ids, _ = self._sorted_ids()
        start = bisect.bisect_left(_Strings(ids), prefix)
        found = []
        for position in range(start, min(start + max(limit, 0), len(ids))):
            value = ids[position].as_py()
            if not value.startswith(prefix):
                break
            found.append(value)
        return self._converted(found)

    def _converted(self, strings: List[str]) -> List:
        convert = int if self.kind == "int" else str
        return [convert(s) for s in strings]

    def column(self, name: str) -> np.ndarray:
        """An extra column by index (entry 0, the unknown id, is 0 / empty)."""
        values = self.extra[name].to_numpy(zero_copy_only=False)
        pad = np.zeros(1, dtype=values.dtype) if values.dtype != object else np.array([""], dtype=object)
        return np.concatenate([pad, values])

    def save(self, path: str) -> None:
        table = pa.table({"index": pa.array(np.arange(1, len(self), dtype=np.int64)), "id": self.ids, **self.extra})
        table = table.replace_schema_metadata({"kind": self.kind})
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        pq.write_table(table, path)

    @staticmethod
    def kind_in(path: str) -> str:
        """The kind a saved vocabulary records, from its Parquet footer alone (no ids read)."""
        return (pq.read_schema(path).metadata or {}).get(b"kind", b"str").decode()

    @staticmethod
    def load(path: str) -> "Vocabulary":
        table = pq.read_table(path)
        index = table.column("index").to_numpy()  # no Python list: 10M households are 10M ints
        if not np.array_equal(index, np.arange(1, table.num_rows + 1)):
            raise ValueError(f"{path}: vocabulary indices are not 1..N")
        kind = (table.schema.metadata or {}).get(b"kind", b"str").decode()
        extra = {
            name: table.column(name).combine_chunks() for name in table.column_names if name not in ("index", "id")
        }
        return Vocabulary(table.column("id").combine_chunks(), kind, extra)


class _Strings:
    """An Arrow string array as a sequence that :mod:`bisect` can search (one element read per
    comparison: about 25 for 10M ids)."""

    def __init__(self, array: pa.Array) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> str:
        return self.array[i].as_py()


VOCAB_NAMES = ("users", "products", "departments", "categories")


@dataclass
class Vocabularies:
    """The four vocabularies of a dataset. ``products`` carries, per product,
    ``department_index`` and ``category_index``."""

    users: Vocabulary
    products: Vocabulary
    departments: Vocabulary
    categories: Vocabulary
    # The directory they were loaded from (None when built in memory): a model directory's tables
    # read from the same files need not be loaded a second time (EmbeddingRows.of_model).
    source: Optional[str] = field(default=None, compare=False)

    def save(self, directory: str) -> None:
        for name in VOCAB_NAMES:
            getattr(self, name).save(os.path.join(directory, f"{name}.parquet"))

    @staticmethod
    def kinds_in(directory: str) -> Dict[str, str]:
        """The id kinds of the ``users`` and ``products`` vocabularies saved in ``directory``, from
        their footers alone; a vocabulary missing or unreadable there is left out."""
        kinds = {}
        for name in ("users", "products"):
            try:
                kinds[name] = Vocabulary.kind_in(os.path.join(directory, f"{name}.parquet"))
            except (OSError, pa.ArrowInvalid):
                pass
        return kinds

    @staticmethod
    def load(directory: str) -> "Vocabularies":
        return Vocabularies(
            *(Vocabulary.load(os.path.join(directory, f"{name}.parquet")) for name in VOCAB_NAMES), source=directory
        )

    def sizes(self) -> Dict[str, int]:
        return {
            "num_users": len(self.users),
            "num_products": len(self.products),
            "num_departments": len(self.departments),
            "num_categories": len(self.categories),
        }
