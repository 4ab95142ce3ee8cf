"""Vector operations: reembed (recompute every vector from text) and normalize_vectors.

Both copy whole records into a records snapshot before any vector changes (reembed every record,
normalize_vectors the ones it rewrites); their inverse, restore_vectors, puts the snapshotted
records back bit for bit, without calling any model.

An embedder is resolved only when a reembed step runs, never when a revision is planned, so
`vecflow check`, `show` and `--dry-run` never import user code or load a model. Three forms:
- `"sentence-transformers:NAME_OR_PATH"`: a sentence-transformers model (hub id or folder);
- `"package.module:attribute"`: a callable (a class is instantiated with no arguments), or
  `"package.module:factory()"`: called with no arguments, it returns the embedder;
- in Python revisions, the embedder object itself (a Chroma `EmbeddingFunction`, any callable).
An embedder takes a list of texts and returns one vector per text.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from vecflow.backends import Backend
from vecflow.batch import Batch
from vecflow.errors import InvalidDataError, OperationError, VecflowError, VerificationError
from vecflow.operations.base import CollectionOp, Op, StepRecord, register_op
from vecflow.operations.fields import project_folders, wrote_nothing
from vecflow.operations.user_code import USER_ERRORS, failure, import_user_module
from vecflow.runtime.context import StepContext
from vecflow.runtime.digest import Digest, batch_digest, collection_digest
from vecflow.runtime.estimate import sample
from vecflow.runtime.stores import Stores

SENTENCE_TRANSFORMERS = "sentence-transformers:"
_NAME = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
DOTTED = re.compile(rf"^({_NAME}):({_NAME})(\(\))?$")
# Embedded once per run: its vector identifies the model (fingerprint) and gives the dimension.
PROBE_TEXT = "vecflow embedder probe: the quick brown fox jumps over the lazy dog."
# How many leading probe components are kept in the step state to recognise the model on resume,
# and how far they may drift (thread counts change the last float bits, not the model).
PROBE_HEAD, PROBE_TOLERANCE = 16, 1e-3
# normalize_vectors leaves vectors whose length is this close to 1: normalising is not bit-stable,
# so a replayed page must not rewrite vectors it already scaled.
UNIT_TOLERANCE = 1e-6


# embedders ---------------------------------------------------------------------------------------


def check_embedder_spec(value: Any) -> Any:
    """Validate an embedder's syntax without importing or loading anything."""
    if isinstance(value, str):
        if value.startswith(SENTENCE_TRANSFORMERS):
            if not value[len(SENTENCE_TRANSFORMERS):].strip():
                raise ValueError("'sentence-transformers:' needs a model name or folder after the colon")
            return value
        if DOTTED.match(value):
            return value
        raise ValueError(f"embedder {value!r} is neither 'sentence-transformers:MODEL' nor "
                         "'package.module:attribute' (or 'package.module:factory()')")
    if callable(value):
        return value
    raise ValueError(f"embedder must be a string or a callable, got {type(value).__name__}")


def embedder_label(value: Any) -> str:
    if isinstance(value, str):
        return value
    # Functions and classes name themselves; other callables are named by their class.
    kind = value if hasattr(value, "__qualname__") else type(value)
    return f"{getattr(kind, '__module__', '?')}.{kind.__qualname__}"


class Embedder:
    """A resolved embedder: texts -> float32 array (n, dim), with errors named after the step."""

    def __init__(self, function: Callable[[list[str]], Any], label: str) -> None:
        self.function = function
        self.label = label

    def __call__(self, texts: list[str]) -> np.ndarray:
        try:
            result = self.function(list(texts))
        except VecflowError:
            raise
        except Exception as exc:
            raise OperationError(f"embedder {self.label} failed: {type(exc).__name__}: {exc}") from exc
        except USER_ERRORS as exc:
            raise OperationError(f"embedder {self.label} {failure(exc)}") from exc
        try:
            vectors = np.asarray(result, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise OperationError(f"embedder {self.label} returned something that is not a list of "
                                 f"equal-length vectors ({exc})") from exc
        if vectors.ndim != 2 or vectors.shape[0] != len(texts) or vectors.shape[1] == 0:
            raise OperationError(f"embedder {self.label} returned shape {vectors.shape} for {len(texts)} "
                                 "texts; expected one non-empty vector per text")
        return vectors


def load_embedder(spec: Any, script_dir: Path, search: Sequence[Path] = ()) -> Embedder:
    """Resolve an embedder: import its module or load its model (run time only). A dotted path's
    module is imported like every user function's: from sys.path, else from the folders in
    `search` (the project folder, then the script directory)."""
    if not isinstance(spec, str):
        if isinstance(spec, type):
            try:
                spec = spec()
            except USER_ERRORS as exc:
                raise OperationError(f"embedder {embedder_label(spec)}: creating it {failure(exc)}") from exc
        return Embedder(spec, embedder_label(spec))
    if spec.startswith(SENTENCE_TRANSFORMERS):
        return Embedder(_sentence_transformer(spec[len(SENTENCE_TRANSFORMERS):].strip(), script_dir), spec)
    module_name, attribute, call = DOTTED.match(spec).groups()  # type: ignore[union-attr]
    try:
        target: Any = import_user_module(module_name, search)
    except ImportError as exc:
        raise OperationError(f"embedder {spec}: cannot import {module_name} ({exc})") from exc
    except USER_ERRORS as exc:
        raise OperationError(f"embedder {spec}: importing {module_name} {failure(exc)}") from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise OperationError(f"embedder {spec}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if call or isinstance(target, type):
        try:
            target = target()
        except USER_ERRORS as exc:
            raise OperationError(f"embedder {spec}: calling {attribute}() {failure(exc)}") from exc
    if not callable(target):
        raise OperationError(f"embedder {spec} is a {type(target).__name__}, not callable on a list of texts")
    return Embedder(target, spec)


def _model_location(name: str, script_dir: Path | None) -> str | None:
    """`./x` and `../x` are relative to the revision scripts' folder (None when it is not known);
    `~` is expanded."""
    if name.startswith(("./", "../")):
        return None if script_dir is None else str((script_dir / name).resolve())
    return str(Path(name).expanduser()) if name.startswith("~") else name


def _sentence_transformer(name: str, script_dir: Path) -> Callable[[list[str]], np.ndarray]:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise OperationError(f"embedder sentence-transformers:{name} needs the sentence-transformers "
                             'package: pip install "vecflow[embeddings]"') from exc
    location = str(_model_location(name, script_dir))
    try:
        model = SentenceTransformer(location)
    except Exception as exc:
        raise OperationError(
            f"embedder sentence-transformers:{name}: cannot load the model from {location} ({exc}); give a "
            "local folder, or a hub id already in the Hugging Face cache (set HF_HUB_OFFLINE=1 offline)") from exc
    return lambda texts: model.encode(texts, convert_to_numpy=True, show_progress_bar=False)


def sentence_transformer_dim(name: str, script_dir: Path | None = None) -> int | None:
    """The output dimension of a sentence-transformers model read from its config files (no
    weights loaded, nothing downloaded); None when it cannot be told that way."""
    location = _model_location(name, script_dir)
    if location is None:
        return None
    folder = Path(location)
    if not (folder / "modules.json").is_file():
        folder = _cached_model_folder(name)
        if folder is None:
            return None
    try:
        dim = None
        for module in json.loads((folder / "modules.json").read_text(encoding="utf-8")):
            kind = module["type"].rpartition(".")[2]
            config_path = folder / module.get("path", "") / "config.json"
            if kind == "Pooling":
                config = json.loads(config_path.read_text(encoding="utf-8"))
                modes = sum(1 for key, on in config.items() if key.startswith("pooling_mode_") and on is True)
                dim = config["word_embedding_dimension"] * max(modes, 1)
            elif kind == "Dense":
                dim = json.loads(config_path.read_text(encoding="utf-8"))["out_features"]
            elif kind not in ("Transformer", "Normalize"):
                return None
        return dim
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cached_model_folder(name: str) -> Path | None:
    """The folder of a hub model id in the local Hugging Face cache, if it is there."""
    if name.startswith(("/", "~", ".")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for repo in ([name] if "/" in name else [f"sentence-transformers/{name}", name]):
        try:
            found = try_to_load_from_cache(repo, "modules.json")
        except ValueError:  # not a valid repo id
            continue
        if isinstance(found, str):
            return Path(found).parent
    return None


def fingerprint(probe: np.ndarray) -> str:
    """sha256 of the probe text's float32 embedding, as little-endian bytes (first 16 hex digits)."""
    return hashlib.sha256(np.asarray(probe, dtype="<f4").tobytes()).hexdigest()[:16]


# helpers -----------------------------------------------------------------------------------------


def _digest_of_snapshot(ctx: StepContext, snapshot: str) -> Digest:
    total, after = Digest.empty(), 0
    while after is not None:
        page, after = ctx.snapshots.read_records(snapshot, after, ctx.page_size())
        total = total + batch_digest(page)
    return total


def _rebuild(backend: Backend, name: str, dim: int, metric: str, params: dict[str, Any],
             layout: str | None) -> None:
    """Make `name` an empty collection of dimension dim, dropping one of another dimension, in the
    layout its records were in (so the application still finds them). Safe to repeat after a crash
    at any point: a collection with the wanted dimension is kept."""
    if backend.has_collection(name) and backend.describe(name).dim != dim:
        backend.drop_collection(name)
    if not backend.has_collection(name):
        backend.create_collection(name, dim, metric, layout=layout if layout in backend.layouts else None,
                                  **params)


# ops ---------------------------------------------------------------------------------------------


@register_op
class ReembedOp(CollectionOp):
    """Recompute every record's vector from its text with an embedding model.

    Every record is first copied into a records snapshot. The new vectors are computed from the
    snapshot's texts and written page by page; when the model's dimension differs from the
    collection's, the collection is dropped (only once the snapshot's digest equals the
    collection's) and recreated with the new dimension, same metric and parameters.
    Inverse: restore_vectors, which puts the snapshotted records back without calling the model."""

    op_name: ClassVar[str] = "reembed"
    captures_snapshot: ClassVar[bool] = True
    embedder: Any
    text_field: str = "document"
    batch_size: int | None = Field(None, gt=0)

    @field_validator("embedder")
    @classmethod
    def _known_syntax(cls, value: Any) -> Any:
        return check_embedder_spec(value)

    def describe(self) -> str:
        return f"reembed {self.collection}: vectors from {self.text_field} by {embedder_label(self.embedder)}"

    def reverse(self, record: StepRecord) -> Op | None:
        if record.snapshot is None:
            return None
        return RestoreVectorsOp(collection=self.collection, snapshot=record.snapshot,
                                collection_metadata=record.state.get("prior_collection_metadata"))

    def reverse_interrupted(self, record: StepRecord) -> list[Op]:
        if record.snapshot is None:
            return super().reverse_interrupted(record)
        # Until the whole snapshot is checkpointed the step only reads the collection.
        if not record.state.get("snapshot_done"):
            return []
        return [RestoreVectorsOp(collection=self.collection, snapshot=record.snapshot, interrupted=True,
                                 collection_metadata=record.state.get("prior_collection_metadata"))]

    def restart_after_damage(self, record: StepRecord, ref: str) -> dict[str, Any] | None:
        # Once the drop began, the collection is rebuilt from the snapshot, which was checked.
        if not record.state.get("dropping"):
            return None
        return {key: value for key, value in record.state.items() if key not in ("rebuilt", "embed_after")}

    def _known_dim(self) -> int | None:
        """The embedder's dimension when its config files tell it without loading it, else None."""
        if isinstance(self.embedder, str) and self.embedder.startswith(SENTENCE_TRANSFORMERS):
            return sentence_transformer_dim(self.embedder[len(SENTENCE_TRANSFORMERS):].strip())
        return None

    def preview(self, stores: Stores) -> list[str]:
        backend, name = stores.resolve(self.collection)
        sampled = sample(backend, name)
        if sampled is None:
            return []  # the simulated run says it does not exist
        old_dim = backend.describe(name).dim
        new_dim = self._known_dim()
        if new_dim is None:
            change = f"dim {old_dim} -> known at run time (the model is only loaded when the step runs)"
        elif new_dim == old_dim:
            change = f"dim {old_dim} -> {new_dim}, vectors rewritten in place"
        else:
            change = f"dim {old_dim} -> {new_dim}, the collection is rebuilt with the new dimension"
        lines = [f"vectors re-embedded from {self._source()}; {change}; records affected: all {sampled.total}",
                 "snapshot: every record (the downgrade restores the old vectors without the model)"]
        page = sampled.page
        missing = [rid for rid, text in zip(page.ids, self._raw_texts(page)) if not isinstance(text, str)]
        if missing:
            lines.append(f"refused: {sampled.extrapolate(len(missing))} have no text in {self._source()} "
                         f"(e.g. {missing[0]!r})")
        return lines

    def simulate(self, ctx: StepContext) -> None:
        """Never loads the embedder: every record must have text; when the model's config files
        give a new dimension, the collection is rebuilt with it (placeholder vectors)."""
        backend, name = ctx.require(self.collection)
        pages = [page for page, _ in backend.pages(name, ctx.batch_size) if len(page)]
        for page in pages:
            self._texts(page)
        info, dim = backend.describe(name), self._known_dim()
        if dim is None or dim == info.dim:
            return
        layout = backend.layout_of(name).layout.name
        backend.drop_collection(name)
        backend.create_collection(name, dim, info.metric, layout=layout, **info.params)
        rng = np.random.default_rng(0)
        for page in pages:
            vectors = rng.standard_normal((len(page), dim)).astype(np.float32)
            backend.upsert(name, Batch(page.ids, vectors, page.documents, page.metadatas, page.extras))

    def run(self, ctx: StepContext) -> None:
        backend, name = ctx.resolve(self.collection)
        if not ctx.state.get("snapshot_done"):
            ctx.require(self.collection)
        if "prior_collection_metadata" not in ctx.state:
            # Kept for the inverse, and re-applied after a rebuild (dropping loses it).
            ctx.save(prior_collection_metadata=backend.collection_metadata(name))
        embedder = load_embedder(self.embedder, ctx.script_dir, project_folders(ctx.stores))
        dim = self._identify(ctx, embedder)
        if not ctx.state.get("snapshot_done"):
            self._snapshot(ctx, backend, name)
        if not ctx.state.get("rebuilt"):
            info = ctx.snapshots.records_info(ctx.snapshot)
            if dim != info.dim:
                still_old = backend.has_collection(name) and backend.describe(name).dim == info.dim
                if still_old and not ctx.state.get("dropping"):
                    self._check_snapshot(ctx, backend, name)
                # Checkpointed before the drop: a drop killed part-way (Chroma and Redis delete
                # records first) leaves a collection the check would refuse on every rerun; the
                # snapshot was checked, so the resumed run finishes the rebuild.
                ctx.save(dropping=True)
                _rebuild(backend, name, dim, info.metric, info.params, ctx.snapshots.records_layout(ctx.snapshot))
            ctx.save(rebuilt=True)
        after = ctx.state.get("embed_after", 0)
        while after is not None:
            page, after = ctx.snapshots.read_records(ctx.snapshot, after, self.batch_size or ctx.page_size())
            if len(page):
                vectors = embedder(self._texts(page))
                if vectors.shape[1] != dim:
                    raise OperationError(f"reembed {self.collection}: embedder {embedder.label} returned "
                                         f"{vectors.shape[1]}-d vectors, its probe {dim}-d")
                page = Batch(page.ids, vectors, page.documents, page.metadatas, page.extras)
                page.check_finite(f"reembed {self.collection}")
                backend.upsert(name, page)
            ctx.save(len(page), embed_after=after)
        embedding = {"model": ctx.state["embedder"], "dim": ctx.state["dim"], "fingerprint": ctx.state["fingerprint"]}
        backend.update_collection_metadata(name, {**ctx.state["prior_collection_metadata"], "embedding": embedding})

    def _identify(self, ctx: StepContext, embedder: Embedder) -> int:
        """Embed the probe text: record model, dimension and fingerprint in the step state (the
        ledger), or check on resume that the model is the one the interrupted run used."""
        probe = embedder([PROBE_TEXT])[0]
        head = [round(float(x), 6) for x in probe[:PROBE_HEAD]]
        if "fingerprint" not in ctx.state:
            backend, name = ctx.require(self.collection)
            info = backend.describe(name)
            ctx.save(embedder=embedder.label, dim=len(probe), old_dim=info.dim, fingerprint=fingerprint(probe),
                     probe_head=head)
        elif len(probe) != ctx.state["dim"] or not np.allclose(head, ctx.state["probe_head"], atol=PROBE_TOLERANCE):
            raise OperationError(
                f"reembed {self.collection}: the embedder is not the one the interrupted run used "
                f"({ctx.state['embedder']}, dim {ctx.state['dim']}, fingerprint {ctx.state['fingerprint']}; now "
                f"{embedder.label}, dim {len(probe)}, fingerprint {fingerprint(probe)}); restore it and rerun")
        ctx.note(f"embedder {ctx.state['embedder']}: dim {ctx.state['old_dim']} -> {ctx.state['dim']}, "
                 f"fingerprint {ctx.state['fingerprint']}")
        return int(ctx.state["dim"])

    def _snapshot(self, ctx: StepContext, backend: Backend, name: str) -> None:
        """Copy every record into the snapshot, refusing a page with a text-less record before it
        is copied (so the rerun after fixing the data reads that page again)."""
        ctx.snapshots.begin_records(ctx.snapshot, backend.describe(name), backend.layout_of(name).layout.name)
        with ctx.track("snapshot", lambda: backend.count(name)):
            for page, cursor in backend.pages(name, ctx.batch_size, ctx.state.get("snapshot_scan")):
                if len(page):
                    self._texts(page)
                    ctx.snapshots.add_records(ctx.snapshot, page)
                # Rows count embedded records only, so ledger throughput is records per second.
                ctx.save(snapshot_scan=cursor, snapshot_done=cursor is None)

    def _check_snapshot(self, ctx: StepContext, backend: Backend, name: str) -> None:
        """Before the collection is dropped: the snapshot must hold exactly what the collection holds."""
        copied = _digest_of_snapshot(ctx, ctx.snapshot)
        with ctx.track(f"check the snapshot against {self.collection}", lambda: backend.count(name)):
            current = collection_digest(backend, name, ctx.batch_size,
                                        on_page=lambda: ctx.ledger.heartbeat(ctx.owner, ctx.lease_seconds))
        if copied != current:
            raise VerificationError(
                f"reembed {self.collection}: the snapshot's digest {copied} differs from the collection's "
                f"{current} (was it written while the step ran?); the collection is untouched")

    def _source(self) -> str:
        return "the documents" if self.text_field == "document" else f"metadata field {self.text_field!r}"

    def _raw_texts(self, page: Batch) -> list[Any]:
        if self.text_field == "document":
            return list(page.documents)
        return [meta.get(self.text_field) for meta in page.metadatas]

    def _texts(self, page: Batch) -> list[str]:
        texts = self._raw_texts(page)
        for rid, text in zip(page.ids, texts):
            if not isinstance(text, str):
                what = "no text" if text is None else f"a {type(text).__name__}, not text,"
                raise InvalidDataError(
                    f"reembed {self.collection}: record {rid!r} has {what} in {self._source()}; give it text "
                    "or delete it, then rerun (no vector has been changed yet)")
        return texts


@register_op
class NormalizeVectorsOp(CollectionOp):
    """Scale every vector to unit length (zero vectors are left as they are). The records whose
    vector changes are snapshotted first. Inverse: restore_vectors."""

    op_name: ClassVar[str] = "normalize_vectors"
    captures_snapshot: ClassVar[bool] = True

    def describe(self) -> str:
        return f"normalize_vectors {self.collection}"

    def reverse(self, record: StepRecord) -> Op | None:
        if record.snapshot is None:
            return None
        return RestoreVectorsOp(collection=self.collection, snapshot=record.snapshot)

    def reverse_interrupted(self, record: StepRecord) -> list[Op]:
        if not record.existed_before(self.collection):
            return []  # the step requires its collection before it writes anything
        if record.snapshot is None:
            return super().reverse_interrupted(record)
        return [RestoreVectorsOp(collection=self.collection, snapshot=record.snapshot, interrupted=True)]

    def preview(self, stores: Stores) -> list[str]:
        backend, name = stores.resolve(self.collection)
        sampled = sample(backend, name)
        if sampled is None:
            return []  # the simulated run says it does not exist
        norms = np.linalg.norm(sampled.page.vectors.astype(np.float64), axis=1)
        changed, zero = int(_to_scale(norms).sum()), int((norms == 0).sum())
        return [f"vectors scaled to unit length; records affected: {sampled.extrapolate(changed)} "
                f"(snapshotted); zero vectors left as they are: {sampled.extrapolate(zero)}"]

    def run(self, ctx: StepContext) -> None:
        backend, name = ctx.require(self.collection)
        ctx.snapshots.begin_records(ctx.snapshot, backend.describe(name), backend.layout_of(name).layout.name)

        def transform(page: Batch) -> Batch | None:
            vectors = page.vectors.astype(np.float64)
            norms = np.linalg.norm(vectors, axis=1)
            positions = [int(i) for i in np.nonzero(_to_scale(norms))[0]]
            if not positions:
                return None
            old = page.take(positions)
            ctx.snapshots.add_records(ctx.snapshot, old)
            unit = vectors[positions] / norms[positions, None]
            return Batch(old.ids, unit.astype(np.float32), old.documents, old.metadatas, old.extras)

        ctx.rewrite_records(self.collection, transform)


def _to_scale(norms: np.ndarray) -> np.ndarray:
    """Which vectors normalize_vectors rewrites: finite, non-zero, and not already unit length."""
    return np.isfinite(norms) & (norms > 0) & (np.abs(norms - 1.0) > UNIT_TOLERANCE)


@register_op
class RestoreVectorsOp(CollectionOp):
    """Internal inverse of reembed and normalize_vectors: upsert the snapshotted records, after
    recreating the collection with the snapshot's dimension if the step changed it."""

    op_name: ClassVar[str] = "restore_vectors"
    internal: ClassVar[bool] = True
    snapshot: str
    # The collection metadata before a reembed (None: leave the collection metadata alone).
    collection_metadata: dict[str, Any] | None = None
    # Undoing a step that stopped part-way: it may have stopped before its snapshot (nothing to
    # do), or while rebuilding the collection with another dimension (it may be gone).
    interrupted: bool = False

    def describe(self) -> str:
        return f"restore_vectors {self.collection} from snapshot {self.snapshot}"

    def run(self, ctx: StepContext) -> None:
        if wrote_nothing(ctx, self.interrupted, self.snapshot):
            return
        backend, name = ctx.resolve(self.collection)
        if not ctx.state.get("rebuilt"):
            info = ctx.snapshots.records_info(self.snapshot)
            if not ctx.resumed and not self.interrupted:
                ctx.require(self.collection)
            _rebuild(backend, name, info.dim, info.metric, info.params, ctx.snapshots.records_layout(self.snapshot))
            ctx.save(rebuilt=True)
        ctx.restore_from_snapshot(self.collection, self.snapshot)
        if self.collection_metadata is not None:
            current = backend.collection_metadata(name)
            backend.update_collection_metadata(name, {**dict.fromkeys(current), **self.collection_metadata})
