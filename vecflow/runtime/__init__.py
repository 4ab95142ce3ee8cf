"""The runtime: plans become steps, steps run in checkpointed batches recorded in the ledger."""
