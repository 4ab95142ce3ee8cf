"""Record operations: cast_field, map_records, delete_records."""
