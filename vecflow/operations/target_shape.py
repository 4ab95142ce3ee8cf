"""The shape of a copy's new target: its framework layout and its metric, and why.

Layout: the op's `target_layout`, else the source's layout when the target backend can write it,
else raw. Metric: the op's `target_metric`, else the source's, except where the source is `l2`
over unit-length vectors (so l2 and cosine rank alike) and the target layout's framework opens
collections as cosine on that backend (LangChain and LlamaIndex on Qdrant): then cosine, so the
application opens the target with its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vecflow.backends import Backend
from vecflow.batch import Batch
from vecflow.errors import OperationError

# (backend, layout) pairs whose framework opens or creates collections as cosine by default.
_COSINE_BY_DEFAULT = {("qdrant", "langchain"), ("qdrant", "llamaindex")}
_UNIT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class TargetShape:
    layout: str
    layout_reason: str
    metric: str
    metric_reason: str
    losses: list[str] = field(default_factory=list)


def choose_target_shape(source: Backend, source_name: str, target: Backend, sample: Batch,
                        layout: str | None, metric: str | None) -> TargetShape:
    source_layout = source.layout_of(source_name).layout.name
    if layout is not None:
        if layout not in target.layouts:
            raise OperationError(f"target_layout {layout!r}: the {target.name} backend writes "
                                 f"{', '.join(target.layouts)}")
        chosen, layout_reason = layout, "target_layout"
    elif source_layout in target.layouts:
        chosen, layout_reason = source_layout, "the source's"
    else:
        chosen, layout_reason = "raw", f"{target.name} cannot write {source_layout}"
    losses = []
    if chosen != source_layout and source_layout == "llamaindex":
        losses.append("LlamaIndex node fields beyond text and metadata (relationships, templates, "
                      "excluded keys) are not written in the target layout")
    source_metric = source.describe(source_name).metric
    if metric is not None:
        return TargetShape(chosen, layout_reason, metric, "target_metric", losses)
    opens_cosine = (target.name, chosen) in _COSINE_BY_DEFAULT
    if source_metric == "l2" and opens_cosine and _unit_length(sample):
        return TargetShape(chosen, layout_reason, "cosine",
                           f"the source is l2 over unit-length vectors, which ranks as cosine does, and "
                           f"{chosen} opens {target.name} collections as cosine", losses)
    reason = "the source's"
    if opens_cosine and source_metric != "cosine":
        reason += (f"; {chosen} opens {target.name} collections as cosine by default: open this one "
                   f"with the {source_metric} distance, or copy with target_metric")
    return TargetShape(chosen, layout_reason, source_metric, reason, losses)


def _unit_length(sample: Batch) -> bool:
    if not len(sample):
        return False
    norms = np.linalg.norm(np.asarray(sample.vectors, dtype=np.float64), axis=1)
    return bool(np.all(np.abs(norms - 1.0) < _UNIT_TOLERANCE))
