"""Schema operations: apply_schema with quarantine."""
