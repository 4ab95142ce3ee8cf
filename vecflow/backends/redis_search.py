"""Search over a Redis collection: KNN through the search module (RediSearch, Redis Stack,
Redis 8) where the server has one, otherwise exact search computed in numpy; and what the module
says about an application's index (`FT.INFO`).

Each collection vecflow creates on a server with the module gets an FT index over its key prefix:
the vector field alone in the raw layout, the framework's default schema in the langchain and
llamaindex layouts (so the application finds the index it would have created). Nothing of
vecflow's is written into the hashes. Scores follow vecflow's convention on both paths (see
docs/backends/redis.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import redis

from vecflow.backends.base import Hit
from vecflow.errors import OperationError

# RediSearch's own name for the score of a KNN; only in replies, never stored.
_SCORE = "__vector_score"
_NATIVE_METRICS = {"l2": "L2", "cosine": "COSINE", "ip": "IP"}
_ALGORITHMS = ("FLAT", "HNSW")
_HNSW_PARAMS = {"m": "M", "ef_construction": "EF_CONSTRUCTION", "ef_runtime": "EF_RUNTIME"}
INDEX_PARAMS = ("algorithm", *_HNSW_PARAMS)


def check_index_params(collection: str, params: dict[str, Any]) -> None:
    """Refuse params the index cannot take, also on a server without the module, so a collection
    created there can be recreated on one."""
    unknown = sorted(set(params) - set(INDEX_PARAMS))
    if unknown:
        raise OperationError(f"unknown redis collection parameter(s) {unknown} for {collection!r}; "
                             f"known: {', '.join(INDEX_PARAMS)}")
    if str(params.get("algorithm", "FLAT")).upper() not in _ALGORITHMS:
        raise OperationError(f"redis collection {collection!r}: algorithm must be FLAT or HNSW, "
                             f"not {params['algorithm']!r}")
    for param in _HNSW_PARAMS:
        if param in params and not (str(params[param]).isdigit() and int(params[param]) > 0):
            raise OperationError(f"redis collection {collection!r}: {param} must be a positive integer, "
                                 f"not {params[param]!r}")


def index_create_args(index: str, prefix: str, vector_field: str, text_field: str, dtype: str, dim: int,
                      metric: str, params: dict, layout: str) -> list:
    """FT.CREATE arguments for a new collection: params algorithm (FLAT or HNSW), m,
    ef_construction and ef_runtime (HNSW only). The langchain and llamaindex layouts get the
    fields of the framework's default schema besides the vector: langchain-redis 0.2.6
    (`text` TEXT, `_index_name` TEXT, `_metadata_json` TEXT) and llama-index-vector-stores-redis
    0.9.0 (`id` TAG, `doc_id` TAG, `text` TEXT)."""
    algorithm = str(params.get("algorithm", "FLAT")).upper()
    attributes: list = ["TYPE", dtype.upper(), "DIM", dim, "DISTANCE_METRIC", _NATIVE_METRICS[metric]]
    if algorithm == "HNSW":
        for param, argument in _HNSW_PARAMS.items():
            if param in params:
                attributes += [argument, int(params[param])]
    vector = [vector_field, "VECTOR", algorithm, len(attributes), *attributes]
    schema = {
        "langchain": [text_field, "TEXT", *vector, "_index_name", "TEXT", "_metadata_json", "TEXT"],
        "llamaindex": ["id", "TAG", "doc_id", "TAG", text_field, "TEXT", "WEIGHT", 1.0, *vector],
    }.get(layout, vector)
    return ["FT.CREATE", index, "ON", "HASH", "PREFIX", 1, prefix, "SCHEMA", *schema]


def index_info(client: redis.Redis, index: str) -> dict[str, Any] | None:
    """What FT.INFO says of an index (see parse_index_info), or None when there is no such index."""
    try:
        reply = client.execute_command("FT.INFO", index)
    except redis.ResponseError:
        return None
    return parse_index_info(reply)


def parse_index_info(reply: Any) -> dict[str, Any]:
    """`{"prefixes", "key_type", "vector": {field, dim, metric, dtype, params} | None}` from an
    FT.INFO reply (RESP2 list or RESP3 map). Vector attributes come in the shapes RedisVL 0.28's
    convert_index_info_to_schema reads: `... VECTOR ALGORITHM FLAT TYPE FLOAT32 DIM 3 ...`, the
    older `... VECTOR FLAT 6 TYPE ...`, or a map."""
    info = _mapping(reply)
    definition = _mapping(info.get("index_definition", []))
    vector = None
    for attribute in info.get("attributes", []):
        pairs = _mapping(attribute) if isinstance(attribute, dict) else None
        items = [_text(item) for item in attribute] if pairs is None else []
        kind = _text(pairs["type"]) if pairs is not None else _after(items, "type")
        if (kind or "").upper() != "VECTOR":
            continue
        values = {k.lower(): _text(v) for k, v in pairs.items()} if pairs is not None else {
            items[i].lower(): items[i + 1] for i in range(len(items) - 1)}
        dim = values.get("dim") or values.get("dims")
        metric = {v: k for k, v in _NATIVE_METRICS.items()}.get((values.get("distance_metric") or "COSINE").upper())
        algorithm = (values.get("algorithm") or next((i for i in items if i.upper() in _ALGORITHMS), "FLAT")).upper()
        vector = {"field": values.get("identifier") or values.get("attribute"), "dim": int(dim) if dim else None,
                  "metric": metric, "dtype": (values.get("data_type") or "FLOAT32").lower(),
                  "params": {"algorithm": algorithm} if algorithm != "FLAT" else {}}
        break
    return {"prefixes": [_text(p) for p in definition.get("prefixes", [])],
            "key_type": _text(definition.get("key_type", "HASH")).upper(), "vector": vector}


def list_indexes(client: redis.Redis) -> list[str]:
    try:
        return [_text(name) for name in client.execute_command("FT._LIST")]
    except redis.ResponseError:
        return []


def has_search_module(client: redis.Redis) -> bool:
    try:
        modules = client.execute_command("MODULE LIST")
    except redis.RedisError:
        return False
    for module in modules:
        fields = module if isinstance(module, dict) else dict(zip(module[::2], module[1::2]))
        name = fields.get(b"name", fields.get("name", b""))
        if _text(name).lower() in ("search", "ft", "searchlight"):
            return True
    return False


def drop_index(client: redis.Redis, index: str | None) -> None:
    """FT.DROPINDEX (the hashes stay); an index that is already gone is fine."""
    if index is None:
        return
    try:
        client.execute_command("FT.DROPINDEX", index)
    except redis.ResponseError as exc:
        if "unknown index" not in str(exc).lower() and "no such index" not in str(exc).lower():
            raise


def knn(client: redis.Redis, index: str, vector_field: str, metric: str, queries: np.ndarray,
        k: int) -> list[list[tuple[bytes, float]]]:
    """One KNN query per query vector, in one pipelined round trip: (key, score) hits."""
    with client.pipeline(transaction=False) as pipe:
        for query in queries:
            pipe.execute_command(
                "FT.SEARCH", index, f"*=>[KNN {k} @{vector_field} $vec AS {_SCORE}]",
                "PARAMS", 2, "vec", query.astype("<f4").tobytes(), "SORTBY", _SCORE, "ASC",
                "RETURN", 1, _SCORE, "LIMIT", 0, k, "DIALECT", 2)
        replies = pipe.execute()
    return [parse_knn_reply(reply, metric) for reply in replies]


def parse_knn_reply(reply: Any, metric: str) -> list[tuple[bytes, float]]:
    """(key, score) hits from an FT.SEARCH reply (RESP2 list or RESP3 map) that RETURNs the score.

    RediSearch reports 1 - dot product for ip; vecflow reports the dot product itself."""
    if isinstance(reply, dict):
        rows = [(row[b"id"] if b"id" in row else row["id"], _texts(_texts(row)["extra_attributes"]))
                for row in _texts(reply)["results"]]
    else:
        rows = [(key, _texts(dict(zip(fields[::2], fields[1::2])))) for key, fields in zip(reply[1::2], reply[2::2])]
    hits = []
    for key, row in rows:
        score = float(_text(row[_SCORE]))
        hits.append((key if isinstance(key, bytes) else str(key).encode(), 1.0 - score if metric == "ip" else score))
    return hits


def exact_top_k(queries: np.ndarray, metric: str, k: int,
                pages: Iterable[tuple[list[str], np.ndarray]]) -> list[list[Hit]]:
    """Exact search over (ids, vectors) pages, keeping a running top k per query: memory
    O(k + page). Pages must come in id order (ties keep the lower id).

    Ranking keys are "smaller is closer": squared L2 distance (as RediSearch reports it),
    1 - cosine similarity, and minus the dot product for ip."""
    q = queries.astype(np.float64)
    if metric == "cosine":
        q = _unit_rows(q)
    best_keys = np.zeros((len(q), 0))
    best_ids = np.empty((len(q), 0), dtype=object)
    for page_ids, vectors in pages:
        x = vectors.astype(np.float64)
        if metric == "l2":
            keys = np.maximum((q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None, :], 0)
        elif metric == "cosine":
            keys = 1 - q @ _unit_rows(x).T
        else:
            keys = -(q @ x.T)
        ids = np.array(page_ids, dtype=object)
        # A stable sort over (best so far, this page) keeps the lower id on ties.
        all_keys = np.concatenate([best_keys, keys], axis=1)
        all_ids = np.concatenate([best_ids, np.broadcast_to(ids, keys.shape)], axis=1)
        order = np.argsort(all_keys, axis=1, kind="stable")[:, :k]
        best_keys = np.take_along_axis(all_keys, order, axis=1)
        best_ids = np.take_along_axis(all_ids, order, axis=1)
    sign = -1.0 if metric == "ip" else 1.0
    return [[(str(rid), sign * float(key)) for rid, key in zip(id_row, key_row)]
            for id_row, key_row in zip(best_ids, best_keys)]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero (cosine similarity 0, distance 1)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _texts(mapping: dict) -> dict[str, Any]:
    return {_text(key): value for key, value in mapping.items()}


def _mapping(value: Any) -> dict[str, Any]:
    """A RESP3 map, or a RESP2 list of alternating keys and values, with text keys."""
    if isinstance(value, dict):
        return _texts(value)
    return {_text(key): item for key, item in zip(value[::2], value[1::2])}


def _after(items: list[str], name: str) -> str | None:
    """The item after the first one equal to name (any case), in a flat attribute list."""
    lowered = [item.lower() for item in items]
    return items[lowered.index(name) + 1] if name in lowered and lowered.index(name) + 1 < len(items) else None
