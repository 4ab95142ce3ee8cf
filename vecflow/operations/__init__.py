"""Operations: Op classes by family (fields, collections), registered by name."""

from vecflow.operations.base import Op, Operations, get_op, public_ops, register_op

__all__ = ["Op", "Operations", "get_op", "public_ops", "register_op"]
