"""How the files backend writes and reads one part file, in each of its three formats.
(vecflow/backends/files_folder.py keeps the folder around them: manifest, VDF_META.json, commits.)

- `parquet` (vecflow's own): columns `id`, `vector` (fixed-size list of float32), `document`,
  `metadata` (the record's metadata as JSON text: exact types, nesting and key order) and `extras`
  (a framework layout's own parts as JSON text, null when there are none).
- `vdf` (vector-io's Universal Vector Dataset Format, github.com/AI-Northstar-Tech/vector-io,
  `src/vdf_io/meta_types.py` at version 0.1.247): columns `id`, `vector`, `document` and one column
  per metadata key, as vector-io's own exporters write them, so its importers read them. Where a
  flat column cannot hold a value exactly, the column is JSON text and says so in its Arrow field
  metadata (see `_flat_columns`); readers that do not know it still get a value.
- `jsonl`: one JSON object per line, `{"id", "vector", "document", "metadata"}` plus `"extras"`
  when there are some: the shape of vecflow's data files. For small data.

A part is read in *groups*: Parquet row groups of at most ROW_GROUP_ROWS rows, or the whole file
for JSON lines. Files are written to a temporary name, fsynced and renamed by the caller.
"""

from __future__ import annotations

import datetime
import decimal
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vecflow.backends.helpers import json_default
from vecflow.batch import Batch
from vecflow.errors import BackendError, InvalidDataError

ROW_GROUP_ROWS = 2048

# Arrow field metadata of a flat VDF metadata column (only where the default does not hold).
_KEY = b"metadata_key"        # the metadata key, when the column had to be renamed
_NULL = b"null_means"         # b"none": a null cell is the value None (default: the key is absent)
_ENCODING = b"encoding"       # b"json": every cell is JSON text (null: the key is absent)


@dataclass(frozen=True)
class Columns:
    """Which columns of a VDF part hold the id, the vector and the text."""

    id: str = "id"
    vector: str = "vector"
    text: str | None = "document"


def dumps(value: Any, record_id: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=json_default)
    except (TypeError, ValueError) as exc:
        raise InvalidDataError(f"record {record_id!r}: metadata cannot be stored as JSON ({exc})") from exc


class Codec:
    """One format's part files. A group is loaded raw (an Arrow table, or the lines of a file),
    which callers may cache, and decoded into fresh Batch objects a slice at a time."""

    suffix: str

    def write(self, handle: BinaryIO, batch: Batch) -> None:
        raise NotImplementedError

    def groups(self, path: Path, rows: int) -> list[int]:
        """Row counts of the file's groups, in order."""
        raise NotImplementedError

    def load(self, path: Path, group: int) -> Any:
        raise NotImplementedError

    def decode(self, raw: Any, start: int, stop: int, dim: int, path: Path, vectors_only: bool = False) -> Batch:
        """Rows [start, stop) of a loaded group; with vectors_only, ids and vectors only."""
        raise NotImplementedError

    def read_ids(self, path: Path) -> list[str]:
        raise NotImplementedError


class ParquetCodec(Codec):
    suffix = ".parquet"

    def write(self, handle: BinaryIO, batch: Batch) -> None:
        metadata = [dumps(m, rid) for rid, m in zip(batch.ids, batch.metadatas)]
        extras = [dumps(e, rid) if e else None for rid, e in zip(batch.ids, batch.extras)]
        table = pa.table({"id": pa.array(batch.ids, pa.string()), "vector": vector_array(batch.vectors),
                          "document": pa.array(batch.documents, pa.string()),
                          "metadata": pa.array(metadata, pa.string()), "extras": pa.array(extras, pa.string())})
        write_parquet(table, handle)

    def groups(self, path: Path, rows: int) -> list[int]:
        return parquet_groups(path)

    def load(self, path: Path, group: int) -> pa.Table:
        return pq.ParquetFile(path).read_row_group(group)

    def decode(self, raw: pa.Table, start: int, stop: int, dim: int, path: Path, vectors_only: bool = False) -> Batch:
        table = raw.slice(start, stop - start)
        n = table.num_rows
        ids = table.column("id").to_pylist()
        vectors = vectors_of(table.column("vector"), dim, path)
        if vectors_only:
            return Batch(ids, vectors, [None] * n, [{} for _ in range(n)])
        extras = [json.loads(e) if e is not None else {} for e in table.column("extras").to_pylist()]
        return Batch(ids, vectors, table.column("document").to_pylist(),
                     [json.loads(m) for m in table.column("metadata").to_pylist()], extras)

    def read_ids(self, path: Path) -> list[str]:
        return pq.read_table(path, columns=["id"]).column("id").to_pylist()


class VdfCodec(Codec):
    """VDF parts; also reads parts other tools wrote (their column names come from VDF_META.json)."""

    suffix = ".parquet"

    def __init__(self, columns: Columns = Columns()) -> None:
        self.columns = columns

    def write(self, handle: BinaryIO, batch: Batch) -> None:
        fields = [pa.field("id", pa.string()), pa.field("vector", pa.list_(pa.float32(), batch.dim)),
                  pa.field("document", pa.string())]
        arrays = [pa.array(batch.ids, pa.string()), vector_array(batch.vectors),
                  pa.array(batch.documents, pa.string())]
        flat_fields, flat_arrays = _flat_columns(batch.ids, batch.metadatas, {"id", "vector", "document"})
        write_parquet(pa.Table.from_arrays(arrays + flat_arrays, schema=pa.schema(fields + flat_fields)), handle)

    def groups(self, path: Path, rows: int) -> list[int]:
        return parquet_groups(path)

    def load(self, path: Path, group: int) -> pa.Table:
        table = pq.ParquetFile(path).read_row_group(group)
        missing = [name for name in (self.columns.id, self.columns.vector) if name not in table.column_names]
        if missing:
            raise BackendError(f"{path}: no column {missing[0]!r} (its VDF_META.json names it)")
        return table

    def decode(self, raw: pa.Table, start: int, stop: int, dim: int, path: Path, vectors_only: bool = False) -> Batch:
        table = raw.slice(start, stop - start)
        n = table.num_rows
        ids = [str(value) for value in table.column(self.columns.id).to_pylist()]
        vectors = vectors_of(table.column(self.columns.vector), dim, path)
        if vectors_only:
            return Batch(ids, vectors, [None] * n, [{} for _ in range(n)])
        text = self.columns.text if self.columns.text in table.column_names else None
        documents = table.column(text).to_pylist() if text else [None] * n
        skip = {self.columns.id, self.columns.vector, text}
        flat = [(table.schema.field(i), table.column(i)) for i in range(table.num_columns)
                if table.column_names[i] not in skip and not table.column_names[i].startswith("__index_level_")]
        return Batch(ids, vectors, [None if d is None else str(d) for d in documents], _read_flat(flat, n))

    def read_ids(self, path: Path) -> list[str]:
        table = pq.read_table(path, columns=[self.columns.id])
        return [str(value) for value in table.column(self.columns.id).to_pylist()]


class JsonLinesCodec(Codec):
    suffix = ".jsonl"

    def write(self, handle: BinaryIO, batch: Batch) -> None:
        for i, rid in enumerate(batch.ids):
            line: dict[str, Any] = {"id": rid, "vector": batch.vectors[i].tolist(), "document": batch.documents[i],
                                    "metadata": batch.metadatas[i]}
            if batch.extras[i]:
                line["extras"] = batch.extras[i]
            handle.write(dumps(line, rid).encode("utf-8") + b"\n")

    def groups(self, path: Path, rows: int) -> list[int]:
        return [rows]

    def load(self, path: Path, group: int) -> list[str]:
        with path.open(encoding="utf-8") as handle:
            return [line for line in handle if line.strip()]

    def decode(self, raw: list[str], start: int, stop: int, dim: int, path: Path, vectors_only: bool = False) -> Batch:
        lines = [json.loads(line) for line in raw[start:stop]]
        vectors = np.asarray([line["vector"] for line in lines], dtype=np.float32).reshape(len(lines), dim)
        return Batch([line["id"] for line in lines], vectors, [line.get("document") for line in lines],
                     [line.get("metadata") or {} for line in lines], [line.get("extras") or {} for line in lines])

    def read_ids(self, path: Path) -> list[str]:
        with path.open(encoding="utf-8") as handle:
            return [json.loads(line)["id"] for line in handle if line.strip()]


CODECS: dict[str, Codec] = {"parquet": ParquetCodec(), "vdf": VdfCodec(), "jsonl": JsonLinesCodec()}


# vectors -------------------------------------------------------------------------------------------


def vector_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(vectors, dtype="<f4").ravel(), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


def vectors_of(column: pa.ChunkedArray, dim: int, path: Path) -> np.ndarray:
    """An (n, dim) float32 array from a column of fixed-size or variable lists (other tools write
    float64 lists)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not len(array):
        return np.zeros((0, dim), np.float32)
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)
            or pa.types.is_fixed_size_list(array.type)):
        raise BackendError(f"{path}: the vector column has type {array.type}, not a list of numbers")
    if array.null_count:
        raise InvalidDataError(f"{path}: row {array.is_null().index(True).as_py()} has no vector")
    if not pa.types.is_fixed_size_list(array.type):
        lengths = np.asarray(array.value_lengths())
        if (lengths != dim).any():
            row = int(np.nonzero(lengths != dim)[0][0])
            raise InvalidDataError(f"{path}: row {row} has a vector of {lengths[row]} numbers; the collection's "
                                   f"dimension is {dim}")
    elif array.type.list_size != dim:
        raise InvalidDataError(f"{path}: vectors have {array.type.list_size} numbers; the dimension is {dim}")
    values = array.flatten()
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(array), dim)


def write_parquet(table: pa.Table, handle: BinaryIO) -> None:
    # Dictionary encoding of float vectors triples the write time and grows the file by half.
    pq.write_table(table, handle, row_group_size=ROW_GROUP_ROWS,
                   use_dictionary=[name for name in table.column_names if name != "vector"])


def parquet_groups(path: Path) -> list[int]:
    metadata = pq.ParquetFile(path).metadata
    return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]


# flat VDF metadata columns ---------------------------------------------------------------------------

_ARROW_TYPES = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}


def _scalar_kind(value: Any) -> type | None:
    """The Python type of a value a typed column holds exactly; None for anything else."""
    kind = type(value)
    if kind is int and not -(2**63) <= value < 2**63:
        return None
    return kind if kind in _ARROW_TYPES else None


def _column_type(values: list[Any]) -> pa.DataType | None:
    """The Arrow type that holds every one of these (non-None) values exactly, or None. Lists
    whose elements (None aside) share one type fit a list column, empty lists included."""
    scalars: set[type] = set()
    elements: set[type] = set()
    lists = False
    for value in values:
        inner = value if isinstance(value, list) else [value]
        lists = lists or isinstance(value, list)
        for item in inner:
            if item is None and inner is value:
                continue
            kind = _scalar_kind(item)
            if kind is None:
                return None
            (elements if inner is value else scalars).add(kind)
    if not values:
        return pa.string()
    if lists:
        if scalars or len(elements) > 1:
            return None
        return pa.list_(_ARROW_TYPES[elements.pop()] if elements else pa.string())
    return _ARROW_TYPES[scalars.pop()] if len(scalars) == 1 else None


def _flat_columns(ids: Sequence[str], metadatas: Sequence[dict[str, Any]],
                  taken: set[str]) -> tuple[list[pa.Field], list[pa.Array]]:
    """One column per metadata key. A typed column where one Arrow type holds every value exactly;
    else JSON text. A null cell means the key is absent, unless the column says `null_means: none`
    (records that have the key set it to None, and none lacks it); a column with both cases is JSON
    text, where the text `null` is None and a null cell is an absent key."""
    keys = list(dict.fromkeys(key for metadata in metadatas for key in metadata))
    fields, arrays = [], []
    for key in keys:
        cells = [metadata.get(key) for metadata in metadatas]
        present = [key in metadata for metadata in metadatas]
        nones = any(p and c is None for p, c in zip(present, cells))
        column_type = _column_type([c for p, c in zip(present, cells) if p and c is not None])
        meta: dict[bytes, bytes] = {}
        if column_type is None or (nones and not all(present)):
            meta[_ENCODING] = b"json"
            column_type = pa.string()
            cells = [dumps(c, rid) if p else None for rid, p, c in zip(ids, present, cells)]
        elif nones:
            meta[_NULL] = b"none"
        name = str(key)
        while name in taken:
            name = f"metadata_{name}"
        if name != key:
            meta[_KEY] = str(key).encode("utf-8")
        taken.add(name)
        fields.append(pa.field(name, column_type, metadata=meta or None))
        arrays.append(pa.array(cells, column_type))
    return fields, arrays


def _read_flat(columns: list[tuple[pa.Field, pa.ChunkedArray]], n: int) -> list[dict[str, Any]]:
    metadatas: list[dict[str, Any]] = [{} for _ in range(n)]
    for field, column in columns:
        meta = field.metadata or {}
        key = meta.get(_KEY, field.name.encode("utf-8")).decode("utf-8")
        as_json = meta.get(_ENCODING) == b"json"
        null_is_none = meta.get(_NULL) == b"none"
        plain = _plainly_typed(field.type)
        for metadata, cell in zip(metadatas, column.to_pylist()):
            if cell is None:
                if null_is_none:
                    metadata[key] = None
            elif as_json:
                metadata[key] = json.loads(cell)
            else:
                metadata[key] = cell if plain else _plain(cell)
    return metadatas


def _plainly_typed(arrow_type: pa.DataType) -> bool:
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return _plainly_typed(arrow_type.value_type)
    return any(check(arrow_type) for check in (pa.types.is_boolean, pa.types.is_integer, pa.types.is_floating,
                                                pa.types.is_string, pa.types.is_large_string))


def _plain(value: Any) -> Any:
    """A JSON-able form of a cell another tool wrote (timestamps, decimals, bytes, structs)."""
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
