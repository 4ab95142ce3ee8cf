"""docs/cookbook.md's LlamaIndex recipe, played verbatim: hashes LlamaIndex's RedisVectorStore
writes (replayed with redis-py and llama-index-core, as tests/frameworks/test_redis_foreign.py
explains) move to Chroma, then to Qdrant, where LlamaIndex's own QdrantVectorStore reads every
node's text; the downgrade leaves every Redis hash byte for byte as it was."""

from __future__ import annotations

import os
from pathlib import Path

import redis

from tests.conftest import running_redis
from tests.docs_session import InProcess, section_steps
from tests.frameworks import apps
from tests.frameworks.test_redis_foreign import every_hash, redis_docs, write_llamaindex_redis

COOKBOOK = Path(__file__).resolve().parent.parent.parent / "docs" / "cookbook.md"


def test_cookbook_llamaindex_redis_to_chroma_to_qdrant_keeps_the_text_and_comes_back_byte_for_byte(tmp_path):
    docs = redis_docs(24, lists=False)
    steps = section_steps(COOKBOOK, "LlamaIndex from Redis to Chroma to Qdrant, text kept")
    downgrade = next(i for i, step in enumerate(steps) if getattr(step, "command", "") == "vecflow downgrade base")
    with running_redis(tmp_path) as url:
        client = redis.Redis.from_url(url)
        try:
            write_llamaindex_redis(client, docs)
            before = every_hash(client)
            project = tmp_path / "project"
            project.mkdir()
            session = InProcess(project, env={**os.environ, "REDIS_URL": url})
            ran = session.play(COOKBOOK, steps[:downgrade])
            assert [command.command for command, _ in ran] == [
                "vecflow inspect cache:llama_index", "vecflow upgrade head", "vecflow inspect search:notes",
                "python read_notes.py"]
            assert not list(client.scan_iter(match="llama_index/*")), "moved: no note is left in Redis"
            expected = {d["id"]: (d["text"], d["metadata"]) for d in docs}
            assert apps.read_llamaindex_qdrant(project / "qdrant", "notes") == expected, "LlamaIndex reads every text"
            session.play(COOKBOOK, steps[downgrade:])
            assert every_hash(client) == before
        finally:
            client.close()
