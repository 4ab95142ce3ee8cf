"""A files collection's folder: what its manifest (or a VDF_META.json) says, and the commit that
changes it.

    <path>/<collection>/
        manifest.json                   what the folder holds; rewritten atomically
        VDF_META.json                   format vdf only: vector-io's description of the same data
        part-000000-g000001.parquet     records (.jsonl for format jsonl); immutable

The manifest holds the format, dimension, metric, layout, count and logical digest of the
collection, the embedding model and collection metadata an export recorded, and the live part
files, each with its row count and digest. A part file name carries its part number (its place in
scan order, never reused) and the manifest generation that wrote it, so a rewritten part gets a
new name and files never change under a reader.

A commit writes the new part files (temporary name, fsync, rename), then the new manifest the same
way: that rename is the commit. Only then are the replaced files removed. A crash before it leaves
the folder as it was plus unlisted files, which `sweep` removes before the next write.

A folder with VDF_META.json and no manifest was written by another tool (vector-io, or by hand
from its documented format, github.com/AI-Northstar-Tech/vector-io `src/vdf_io/meta_types.py` at
version 0.1.247); it is described here the same way, read-only.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow.parquet as pq

from vecflow.backends.files_formats import CODECS, Codec, Columns, VdfCodec, parquet_groups
from vecflow.backends.helpers import fsync_directory
from vecflow.batch import Batch
from vecflow.errors import BackendError, CollectionExistsError
from vecflow.runtime.digest import Digest, batch_digest

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
VDF_META = "VDF_META.json"
# The vector-io version whose VDF_META.json schema vecflow writes.
VDF_VERSION = "0.1.247"
# vector-io writes metrics as qdrant-client Distance values.
VDF_METRICS = {"cosine": "Cosine", "l2": "Euclid", "ip": "Dot"}
_VDF_READ_METRICS = {"cosine": "cosine", "euclid": "l2", "euclidean": "l2", "l2": "l2", "dot": "ip", "ip": "ip",
                     "dotproduct": "ip", "dot_product": "ip"}
NOT_PROVIDED = "NOT_PROVIDED"
# Files a commit writes into a collection folder, which `sweep` may remove once no manifest lists them.
_OURS = re.compile(r"^(part-\d+-g\d+\.(parquet|jsonl)|\..+\.tmp)$")


@dataclass(frozen=True)
class Part:
    part: int
    file: str
    rows: int
    digest: str | None = None


@dataclass(frozen=True)
class VdfEntry:
    """One (index, namespace) of a VDF folder; key = index, or index/namespace."""

    key: str
    namespace: dict[str, Any]
    id_column: str


@dataclass(frozen=True)
class View:
    """A collection's folder as its manifest (or VDF_META.json) describes it at one moment."""

    name: str
    folder: Path
    format: str
    codec: Codec
    dim: int
    metric: str
    parts: tuple[Part, ...]
    identity: tuple[int, ...]
    manifest: dict[str, Any] | None = None  # None: a VDF folder another tool wrote (read-only)
    entry: VdfEntry | None = field(default=None, repr=False)

    @property
    def count(self) -> int:
        return sum(part.rows for part in self.parts)

    @functools.cached_property
    def numbers(self) -> list[int]:
        """The part numbers, in scan order (for bisecting a cursor)."""
        return [part.part for part in self.parts]


def identity(path: Path) -> tuple[int, ...]:
    """Changes whenever the file is replaced or rewritten."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size


# reading ---------------------------------------------------------------------------------------------


def load_view(name: str, folder: Path, key: str | None) -> View | None:
    """The folder's description (key: the VDF entry of a FOLDER/INDEX name); None when it holds
    no such collection."""
    if (folder / MANIFEST).is_file():
        return _load_manifest(name, folder) if key is None else None
    if not (folder / VDF_META).is_file():
        return None
    entries = {entry.key: entry for entry in vdf_entries(folder)}
    entry = entries.get(key) if key is not None else next(iter(entries.values()))
    if entry is None or (key is None and len(entries) > 1):
        return None
    columns = vdf_columns(entry)
    files = vdf_files(folder, entry)
    parts = tuple(Part(i, path.relative_to(folder).as_posix(), sum(parquet_groups(path)))
                  for i, path in enumerate(files))
    dim = entry.namespace.get("dimensions")
    if not isinstance(dim, int) or dim < 1:
        dim = _first_vector_length(files, columns.vector, folder)
    metric = vdf_metric(entry.namespace.get("metric"), folder / VDF_META)
    return View(name, folder, "vdf", VdfCodec(columns), dim, metric, parts, identity(folder / VDF_META), None, entry)


def _load_manifest(name: str, folder: Path) -> View:
    path = folder / MANIFEST
    try:
        found = identity(path)
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("version") != MANIFEST_VERSION:
            raise BackendError(f"{path} has version {manifest.get('version')!r}; this vecflow reads version "
                               f"{MANIFEST_VERSION}: upgrade vecflow")
        parts = tuple(Part(**part) for part in manifest["parts"])
        return View(name, folder, manifest["format"], CODECS[manifest["format"]], int(manifest["dimension"]),
                    manifest["metric"], parts, found, manifest)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackendError(f"{path} is not a readable manifest ({type(exc).__name__}: {exc})") from exc


def described_by(folder: Path, key: str | None) -> Path:
    """The file whose identity tells whether a cached View is still current."""
    return folder / (MANIFEST if key is None and (folder / MANIFEST).is_file() else VDF_META)


# writing ---------------------------------------------------------------------------------------------


def new_manifest(fmt: str, dim: int, metric: str) -> dict[str, Any]:
    return {"version": MANIFEST_VERSION, "format": fmt, "dimension": dim, "metric": metric, "layout": None,
            "count": 0, "digest": Digest.empty().to_text(), "embedding_model": None, "collection_metadata": {},
            "exported_from": None, "generation": 0, "next_part": 0, "parts": []}


def write_part(view: View, number: int, batch: Batch) -> Part:
    """A new part file for the next commit of the view's collection."""
    file = f"part-{number:06d}-g{view.manifest['generation'] + 1:06d}{view.codec.suffix}"
    write_atomically(view.folder / file, lambda handle: view.codec.write(handle, batch))
    return Part(number, file, len(batch), batch_digest(batch).to_text())


def commit(view: View, parts: list[Part], replaced: list[str], changes: dict[str, Any], backend: str) -> View:
    """Publish a manifest listing `parts` (with `changes` to its other keys), then remove the
    replaced files. For format vdf, VDF_META.json follows."""
    parts = sorted(parts, key=lambda part: part.part)
    digest = sum((Digest.from_text(part.digest) for part in parts), Digest.empty())
    manifest = {**view.manifest, **changes, "count": sum(part.rows for part in parts), "digest": digest.to_text(),
                "generation": view.manifest["generation"] + 1, "parts": [asdict(part) for part in parts]}
    write_json(view.folder / MANIFEST, manifest)
    if view.format == "vdf":
        write_json(view.folder / VDF_META, vdf_meta(view.name, manifest, [part.file for part in parts], backend))
    for file in replaced:
        (view.folder / file).unlink(missing_ok=True)
    return replace(view, parts=tuple(parts), manifest=manifest, identity=identity(view.folder / MANIFEST))


def sweep(view: View) -> None:
    """Remove files an interrupted write left behind (written, never committed)."""
    listed = {part.file for part in view.parts}
    for leftover in os.listdir(view.folder):
        if _OURS.match(leftover) and leftover not in listed:
            os.unlink(view.folder / leftover)


def create_folder(folder: Path, manifest: dict[str, Any], what: str) -> None:
    """A new collection folder holding `manifest`: built in a hidden folder and renamed into place,
    so a crash never leaves half a collection under a real name. An existing empty folder is taken."""
    staging = Path(tempfile.mkdtemp(prefix=".creating-", dir=folder.parent))
    try:
        write_json(staging / MANIFEST, manifest)
        try:
            os.rename(staging, folder)
        except OSError as exc:
            raise CollectionExistsError(f"cannot create {what}: {folder} already exists and is not an empty folder "
                                        f"({exc.strerror})") from exc
        fsync_directory(folder.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_folder(folder: Path) -> None:
    """Renamed away first, so the collection disappears at once even if the removal is cut short."""
    trash = folder.parent / f".dropped-{uuid.uuid4().hex}"
    os.rename(folder, trash)
    fsync_directory(folder.parent)
    shutil.rmtree(trash)


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temporary file, fsync, rename into place, fsync the folder."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(path.parent)


def write_json(path: Path, value: Any) -> None:
    text = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
    write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))




# where collections are (for `vecflow export` and `vecflow import`) ----------------------------------


def export_location(path: str | Path) -> tuple[Path, str]:
    """(store folder, collection name) of an export folder to write."""
    folder = Path(os.path.abspath(path))
    if not folder.name:
        raise BackendError(f"cannot export into {folder}: name a folder for the export")
    return folder.parent, folder.name


def import_location(path: str | Path) -> tuple[Path, str]:
    """(store folder, collection name) of a folder to import: one vecflow wrote (manifest.json), a
    VDF folder with one index, or VDF_FOLDER/INDEX[/NAMESPACE] for a VDF folder with several."""
    folder = Path(os.path.abspath(path))
    if (folder / MANIFEST).is_file():
        return folder.parent, folder.name
    if (folder / VDF_META).is_file():
        keys = [entry.key for entry in vdf_entries(folder)]
        if len(keys) == 1:
            return folder.parent, folder.name
        raise BackendError(f"{folder} holds {len(keys)} VDF indexes ({', '.join(keys)}); import one of them: "
                           f"vecflow import {folder}/{keys[0]} STORE:COLLECTION")
    for depth, ancestor in enumerate(folder.parents[:2], start=1):
        if (ancestor / VDF_META).is_file() and not (ancestor / MANIFEST).is_file():
            key = "/".join(folder.parts[-depth:])
            if key in [entry.key for entry in vdf_entries(ancestor)]:
                return ancestor.parent, f"{ancestor.name}/{key}"
    raise BackendError(f"{folder} is not an export: it has no {MANIFEST} (written by vecflow export) and no "
                       f"{VDF_META} (a VDF folder)")


# VDF_META.json ---------------------------------------------------------------------------------------


def vdf_meta(name: str, manifest: dict[str, Any], files: list[str], backend: str) -> dict[str, Any]:
    """The VDF_META.json of a vecflow-written VDF folder: one index, its parts beside it (data_path ".")."""
    model, dim, count = manifest["embedding_model"] or NOT_PROVIDED, manifest["dimension"], manifest["count"]
    model_map = {"vector": {"model_name": model, "text_column": "document", "dimensions": dim,
                            "vector_column": "vector"}}
    namespace = {"namespace": "", "index_name": name, "total_vector_count": count, "exported_vector_count": count,
                 "dimensions": dim, "model_name": model, "model_map": model_map, "vector_columns": ["vector"],
                 "data_path": ".", "metric": VDF_METRICS[manifest["metric"]], "index_config": None,
                 "schema_dict_str": None}
    return {"version": VDF_VERSION, "file_structure": [f"{name}/{f}" for f in [*files, VDF_META]],
            "author": _user(), "exported_from": manifest["exported_from"] or backend,
            "indexes": {name: [namespace]}, "exported_at": datetime.now(timezone.utc).astimezone().isoformat(),
            "id_column": "id"}


def vdf_entries(folder: Path) -> list[VdfEntry]:
    """The indexes and namespaces a VDF_META.json describes."""
    path = folder / VDF_META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        entries = [VdfEntry(index if not ns.get("namespace") else f"{index}/{ns['namespace']}", ns,
                            meta.get("id_column") or "id")
                   for index, namespaces in meta["indexes"].items() for ns in namespaces]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackendError(f"{path} is not a readable VDF_META.json ({type(exc).__name__}: {exc})") from exc
    if not entries:
        raise BackendError(f"{path} describes no index")
    return entries


def vdf_columns(entry: VdfEntry) -> Columns:
    """The id column, the first vector column, and the text column model_map names (else `document`)."""
    vector = (entry.namespace.get("vector_columns") or ["vector"])[0]
    text = ((entry.namespace.get("model_map") or {}).get(vector) or {}).get("text_column")
    return Columns(entry.id_column, vector, text if text and text != NOT_PROVIDED else "document")


def vdf_files(folder: Path, entry: VdfEntry) -> list[Path]:
    """An entry's Parquet files, sorted: its data_path is a file, or a folder searched
    recursively (as vector-io does)."""
    data = folder / str(entry.namespace.get("data_path") or ".")
    if data.is_file():
        return [data]
    if not data.is_dir():
        raise BackendError(f"{folder / VDF_META}: data_path {entry.namespace.get('data_path')!r} does not exist")
    return sorted(p for p in data.rglob("*.parquet") if p.is_file())


def vdf_metric(value: Any, where: Path) -> str:
    metric = _VDF_READ_METRICS.get(str(value or "cosine").lower())
    if metric is None:
        raise BackendError(f"{where}: metric {value!r} has no vecflow equivalent (cosine, Euclid, Dot)")
    return metric


def _first_vector_length(files: list[Path], column: str, folder: Path) -> int:
    for path in files:
        for value in pq.read_table(path, columns=[column]).column(column).to_pylist():
            if value:
                return len(value)
    raise BackendError(f"{folder / VDF_META}: no dimension given and no vector found")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return os.environ.get("USER", "unknown")
