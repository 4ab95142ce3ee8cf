"""Vector operations: reembed, normalize_vectors."""
