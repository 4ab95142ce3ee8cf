"""Collection splits and merges: split_collection, merge_collections."""
