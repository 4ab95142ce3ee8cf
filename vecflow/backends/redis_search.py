"""Search over a Redis collection: KNN through the search module (RediSearch, Redis Stack,
Redis 8) where the server has one, otherwise exact search computed in numpy.

Each collection of a server with the module gets an FT index over its record prefix (only the
`vector` field); nothing of vecflow's is written into the hashes. Scores follow vecflow's
convention on both paths (see docs/backends/redis.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import redis

from vecflow.backends.base import Hit
from vecflow.errors import OperationError

VECTOR_FIELD, ID_FIELD = "vector", "id"
# RediSearch's own name for the score of a KNN over the field `vector`; only in replies, never stored.
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


def index_create_args(index: str, prefix: str, dim: int, metric: str, params: dict) -> list:
    """FT.CREATE arguments for a collection: params algorithm (FLAT or HNSW), m, ef_construction
    and ef_runtime (HNSW only)."""
    algorithm = str(params.get("algorithm", "FLAT")).upper()
    attributes: list = ["TYPE", "FLOAT32", "DIM", dim, "DISTANCE_METRIC", _NATIVE_METRICS[metric]]
    if algorithm == "HNSW":
        for param, argument in _HNSW_PARAMS.items():
            if param in params:
                attributes += [argument, int(params[param])]
    return ["FT.CREATE", index, "ON", "HASH", "PREFIX", 1, prefix,
            "SCHEMA", VECTOR_FIELD, "VECTOR", algorithm, len(attributes), *attributes]


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


def knn(client: redis.Redis, index: str, metric: str, queries: np.ndarray, k: int) -> list[list[Hit]]:
    """One KNN query per query vector, in one pipelined round trip."""
    with client.pipeline(transaction=False) as pipe:
        for query in queries:
            pipe.execute_command(
                "FT.SEARCH", index, f"*=>[KNN {k} @{VECTOR_FIELD} $vec AS {_SCORE}]",
                "PARAMS", 2, "vec", query.astype("<f4").tobytes(), "SORTBY", _SCORE, "ASC",
                "RETURN", 2, ID_FIELD, _SCORE, "LIMIT", 0, k, "DIALECT", 2)
        replies = pipe.execute()
    return [parse_knn_reply(reply, metric) for reply in replies]


def parse_knn_reply(reply: Any, metric: str) -> list[Hit]:
    """Hits from an FT.SEARCH reply (RESP2 list or RESP3 map) that RETURNs id and the score.

    RediSearch reports 1 - dot product for ip; vecflow reports the dot product itself."""
    if isinstance(reply, dict):
        rows = [_texts(_texts(row)["extra_attributes"]) for row in _texts(reply)["results"]]
    else:
        rows = [_texts(dict(zip(fields[::2], fields[1::2]))) for fields in reply[2::2]]
    hits = []
    for row in rows:
        score = float(_text(row[_SCORE]))
        hits.append((_text(row[ID_FIELD]), 1.0 - score if metric == "ip" else score))
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
