"""The revision graph: pure data, no files and no backends.

A RevisionMap holds every Revision of a script directory, checks the graph once (duplicate ids,
dangling references, cycles, clashing branch labels) and answers what the commands ask: what an
identifier means, and what to apply or un-apply, in which order, to reach a target.

Identifiers follow Alembic's grammar:

    <id>, <unique id prefix>, <branch label>   one revision
    head | heads | base | current              the single head | all heads | nothing |
                                               the current heads of the applied set
    <label>@head                               the single head descending from <label>
    +N, -N                                     N steps from the single current head
    <rev>+N, <rev>-N                           N steps from <rev>
    <label>@+N, <label>@-N                     N steps from the current head of branch <label>

A step follows down_revision edges only; depends_on never makes a step. Plans and ancestry do
follow depends_on: applying a revision needs its dependencies, and un-applying a revision
un-applies whatever depends on it.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from vecflow.errors import AmbiguousRevisionError, MultipleHeadsError, RevisionError

KEYWORDS = frozenset({"head", "heads", "base", "current"})
"""Words with a meaning of their own; no revision id or branch label may use one."""

# '@', ':', '+' and '-' carry meaning in identifiers ("label@head", "a:b", "rev+1", "rev-1").
# Branch labels may contain '+' and '-' because an exact label match is tried before any parsing.
_REVISION_ID = re.compile(r"[^@:+\-\s]+")
_BRANCH_LABEL = re.compile(r"[^@:\s]+")
_STEP = re.compile(r"[+-]\d+")
_RELATIVE = re.compile(r"(?P<anchor>.*?)(?P<step>[+-]\d+)")


def normalize_ids(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """Return revision ids as a tuple: None -> (), "a" -> ("a",), ["a", "b"] -> ("a", "b").

    Raises TypeError when an element is not a string (YAML reads `0012` as the integer 12).
    """
    if value is None:
        return ()
    if not isinstance(value, str | Sequence):
        raise TypeError(f"expected a revision id or a list of them, got {value!r}")
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"expected a revision id string, got {item!r} ({type(item).__name__})")
    return items


@dataclass(eq=False)
class Revision:
    """One node of the graph: a revision script's identity and its edges.

    down_revision, branch_labels and depends_on also accept None, a string or a list; they are
    normalised to tuples. `nextrev` (the children, sorted) is filled in by RevisionMap.
    """

    revision: str
    down_revision: tuple[str, ...] = ()
    branch_labels: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    message: str = ""
    path: str | None = None
    script: Any = field(default=None, repr=False)
    nextrev: tuple[str, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        where = f"{self.path}: " if self.path else ""
        if not isinstance(self.revision, str) or not _REVISION_ID.fullmatch(self.revision):
            raise RevisionError(
                f"{where}revision id {self.revision!r} is not valid; use letters and digits "
                "(no spaces and none of '@', ':', '+', '-')"
            )
        for name in ("down_revision", "branch_labels", "depends_on"):
            try:
                setattr(self, name, normalize_ids(getattr(self, name)))
            except TypeError as exc:
                raise RevisionError(
                    f"{where}{name} of revision {self.revision}: {exc}; quote ids in YAML"
                ) from None
        if self.revision in KEYWORDS:
            raise RevisionError(f"{where}'{self.revision}' is a reserved word, not a revision id")
        if len(set(self.down_revision)) < len(self.down_revision):
            raise RevisionError(f"{where}down_revision {self.down_revision} repeats a revision")
        for label in self.branch_labels:
            if label in KEYWORDS or _STEP.fullmatch(label) or not _BRANCH_LABEL.fullmatch(label):
                raise RevisionError(
                    f"{where}branch label {label!r} is not valid; it may not be a reserved word "
                    f"({', '.join(sorted(KEYWORDS))}) or a step like '+1', nor contain spaces, "
                    "'@' or ':'"
                )

    @property
    def is_base(self) -> bool:
        """True when the revision has no down_revision."""
        return not self.down_revision

    @property
    def is_merge(self) -> bool:
        """True when the revision merges two or more parents."""
        return len(self.down_revision) >= 2


def _named(rev: Revision) -> str:
    return f"{rev.revision} ({rev.path})" if rev.path else rev.revision


def _where(rev: Revision) -> str:
    return rev.path or f"revision {rev.revision}"


def _listing(ids: Iterable[str]) -> str:
    return ", ".join(ids)


def _either(choices: Sequence[str]) -> str:
    quoted = [f"'{choice}'" for choice in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


class RevisionMap:
    """Every revision of a script directory, validated once, with graph queries and plans.

    `applied` arguments are the full set of applied revision ids (the ledger keeps the whole set,
    not only heads). Iterating yields Revision objects in topological order.
    """

    def __init__(self, revisions: Iterable[Revision]) -> None:
        self._revs: dict[str, Revision] = {}
        for rev in revisions:
            first = self._revs.get(rev.revision)
            if first is not None:
                raise RevisionError(
                    f"revision '{rev.revision}' is defined twice: {_where(first)} and {_where(rev)}"
                )
            self._revs[rev.revision] = rev
        self._labels = self._map_labels()
        self._needs: dict[str, tuple[str, ...]] = {}
        children: dict[str, list[str]] = {rev_id: [] for rev_id in self._revs}
        self._dependents: dict[str, list[str]] = {rev_id: [] for rev_id in self._revs}
        for rev in self._revs.values():
            deps = self._check_references(rev)
            for parent in rev.down_revision:
                children[parent].append(rev.revision)
            for dep in deps:
                self._dependents[dep].append(rev.revision)
            self._needs[rev.revision] = tuple(dict.fromkeys(rev.down_revision + deps))
        for rev_id, kids in children.items():
            self._revs[rev_id].nextrev = tuple(sorted(kids))
        self._order = {rev_id: i for i, rev_id in enumerate(self._sort_all())}
        revs = self._revs.values()
        self.heads: tuple[str, ...] = tuple(sorted(r.revision for r in revs if not r.nextrev))
        self.bases: tuple[str, ...] = tuple(sorted(r.revision for r in revs if r.is_base))

    # -- construction ----------------------------------------------------------------------

    def _map_labels(self) -> dict[str, str]:
        labels: dict[str, str] = {}
        for rev in self._revs.values():
            for label in rev.branch_labels:
                if label in self._revs:
                    raise RevisionError(
                        f"{_where(rev)}: branch label '{label}' is also the id of revision "
                        f"{_named(self._revs[label])}; rename the label"
                    )
                if label in labels:
                    raise RevisionError(
                        f"branch label '{label}' is declared twice: "
                        f"{_where(self._revs[labels[label]])} and {_where(rev)}"
                    )
                labels[label] = rev.revision
        return labels

    def _check_references(self, rev: Revision) -> tuple[str, ...]:
        """Check rev's edges point at known revisions; return its depends_on as revision ids."""
        for parent in rev.down_revision:
            if parent not in self._revs:
                is_label = parent in self._labels
                hint = " (it is a branch label; use its revision id)" if is_label else ""
                raise RevisionError(
                    f"{_where(rev)}: down_revision '{parent}' is not a known revision{hint}"
                )
        deps = []
        for dep in rev.depends_on:
            target = dep if dep in self._revs else self._labels.get(dep)
            if target is None:
                raise RevisionError(
                    f"{_where(rev)}: depends_on '{dep}' is not a known revision or branch label"
                )
            deps.append(target)
        return tuple(deps)

    def _sort_all(self) -> list[str]:
        """Kahn's algorithm over down_revision and depends_on, ties broken by id; finds cycles."""
        waiting = {rev_id: len(needs) for rev_id, needs in self._needs.items()}
        ready = [rev_id for rev_id, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            rev_id = heapq.heappop(ready)
            order.append(rev_id)
            for later in self._later(rev_id):
                waiting[later] -= 1
                if waiting[later] == 0:
                    heapq.heappush(ready, later)
        if len(order) < len(self._revs):
            self._raise_cycle(set(self._revs) - set(order))
        return order

    def _raise_cycle(self, stuck: set[str]) -> None:
        # Every stuck revision needs another stuck one, so following needs must loop.
        path: list[str] = []
        rev_id = min(stuck)
        while rev_id not in path:
            path.append(rev_id)
            rev_id = min(need for need in self._needs[rev_id] if need in stuck)
        cycle = path[path.index(rev_id):]
        chain = " -> ".join(_named(self._revs[r]) for r in cycle)
        raise RevisionError(
            f"revisions form a cycle: {chain} -> {rev_id}; each one names the next in "
            "down_revision or depends_on, so none of them can be applied first"
        )

    def _later(self, rev_id: str) -> list[str]:
        """Revisions that need rev_id directly: children and dependents, without repeats."""
        return list(dict.fromkeys(self._revs[rev_id].nextrev + tuple(self._dependents[rev_id])))

    # -- lookup ------------------------------------------------------------------------------

    def get(self, rev_id: str) -> Revision:
        """The revision with exactly this id; RevisionError if there is none."""
        try:
            return self._revs[rev_id]
        except KeyError:
            raise RevisionError(f"no revision has the id '{rev_id}'") from None

    def __contains__(self, rev_id: object) -> bool:
        return rev_id in self._revs

    def __iter__(self) -> Iterator[Revision]:
        return (self._revs[rev_id] for rev_id in self._order)

    def __len__(self) -> int:
        return len(self._revs)

    def _ids(self, rev_ids: str | Iterable[str]) -> tuple[str, ...]:
        ids = (rev_ids,) if isinstance(rev_ids, str) else tuple(rev_ids)
        for rev_id in ids:
            self.get(rev_id)
        return ids

    def _check_applied(self, applied: Collection[str]) -> frozenset[str]:
        for rev_id in applied:
            if rev_id not in self._revs:
                raise RevisionError(
                    f"applied revision '{rev_id}' is not in the revision graph "
                    "(was its script deleted or renamed?)"
                )
        return frozenset(applied)

    # -- graph queries -----------------------------------------------------------------------

    def _closure(self, start: tuple[str, ...], step: Callable[[str], Iterable[str]]) -> set[str]:
        seen = set(start)
        todo = list(start)
        while todo:
            for nxt in step(todo.pop()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def ancestors(
        self, rev_ids: str | Iterable[str], include_dependencies: bool = True
    ) -> set[str]:
        """rev_ids and everything they need, through down_revision (and depends_on)."""
        if include_dependencies:
            return self._closure(self._ids(rev_ids), self._needs.__getitem__)
        return self._closure(self._ids(rev_ids), lambda r: self._revs[r].down_revision)

    def descendants(
        self, rev_ids: str | Iterable[str], include_dependencies: bool = True
    ) -> set[str]:
        """rev_ids and everything that needs them; a revision depending on X descends from X."""
        if include_dependencies:
            return self._closure(self._ids(rev_ids), self._later)
        return self._closure(self._ids(rev_ids), lambda r: self._revs[r].nextrev)

    def topological(self, rev_ids: str | Iterable[str]) -> list[str]:
        """rev_ids ordered parents and dependencies first; deterministic (ties by id)."""
        return sorted(set(self._ids(rev_ids)), key=self._order.__getitem__)

    def heads_of(self, applied: Collection[str]) -> tuple[str, ...]:
        """The current heads of an applied set: applied revisions with no applied child."""
        done = self._check_applied(applied)
        return tuple(sorted(
            rev_id for rev_id in done if not done.intersection(self._revs[rev_id].nextrev)
        ))

    def branch_points(self) -> list[Revision]:
        """Revisions with two or more children, in topological order."""
        return [rev for rev in self if len(rev.nextrev) >= 2]

    # -- identifiers -------------------------------------------------------------------------

    def resolve(self, identifier: str, applied: Collection[str] = ()) -> tuple[str, ...]:
        """Resolve one identifier (see the module docstring) to revision ids; () means base."""
        ident = identifier.strip()
        if ident in KEYWORDS or ident in self._revs or ident in self._labels:
            return self._resolve_name(ident, applied)
        if "@" in ident:
            name, _, rest = ident.rpartition("@")
            root = self._resolve_single(name, ident, applied)
            if root is None:
                raise RevisionError(f"'{ident}': expected a revision or branch label before '@'")
            if rest == "head":
                return self._branch_head(root, name)
            if _STEP.fullmatch(rest):
                return self._branch_step(root, name, int(rest), applied, ident)
            raise RevisionError(f"'{ident}': after '@' expected 'head', '+N' or '-N'")
        relative = _RELATIVE.fullmatch(ident)
        if relative:
            anchor, step = relative["anchor"], relative["step"]
            if anchor:
                return self._walk(self._resolve_single(anchor, ident, applied), int(step), ident)
            return self._walk(self._current_head(step, applied), int(step), ident)
        return self._resolve_name(ident, applied)

    def _resolve_name(self, name: str, applied: Collection[str]) -> tuple[str, ...]:
        """A keyword, exact id, branch label or unique id prefix."""
        if name == "base":
            return ()
        if name == "heads":
            return self.heads
        if name == "current":
            return self.heads_of(applied)
        if name == "head":
            if len(self.heads) > 1:
                raise MultipleHeadsError(
                    f"multiple heads are present ({_listing(self.heads)}); use 'heads' for all "
                    "of them, '<branch>@head' or a revision id"
                )
            return self.heads
        if name in self._revs:
            return (name,)
        if name in self._labels:
            return (self._labels[name],)
        matches = sorted(rev_id for rev_id in self._revs if name and rev_id.startswith(name))
        if len(matches) > 1:
            raise AmbiguousRevisionError(
                f"ambiguous: '{name}' matches {_listing(matches)}; use more characters"
            )
        if not matches:
            raise RevisionError(
                f"no revision matches '{name}' (expected a revision id or unique prefix, a "
                "branch label, head, heads, base, current, <label>@head or a relative step)"
            )
        return (matches[0],)

    def _resolve_single(self, name: str, ident: str, applied: Collection[str]) -> str | None:
        """Resolve the part of a compound identifier that must be one revision (None = base)."""
        ids = self._resolve_name(name, applied)
        if len(ids) > 1:
            raise MultipleHeadsError(
                f"'{name}' in '{ident}' means several revisions ({_listing(ids)}); "
                "name one of them instead"
            )
        return ids[0] if ids else None

    def _current_head(self, step: str, applied: Collection[str]) -> str | None:
        current = self.heads_of(applied)
        if len(current) > 1:
            raise MultipleHeadsError(
                f"multiple current heads ({_listing(current)}), so '{step}' is ambiguous; use "
                f"'<rev>{step}' or '<label>@{step}', e.g. '{current[0]}{step}'"
            )
        return current[0] if current else None

    def _branch_head(self, root: str, name: str) -> tuple[str, ...]:
        branch = self.descendants(root, include_dependencies=False)
        heads = [head for head in self.heads if head in branch]
        if len(heads) > 1:
            raise MultipleHeadsError(
                f"branch '{name}' has multiple heads ({_listing(heads)}); "
                f"use one of {_either(heads)}"
            )
        return tuple(heads)

    def _branch_step(
        self, root: str, name: str, steps: int, applied: Collection[str], ident: str
    ) -> tuple[str, ...]:
        branch = self.descendants(root, include_dependencies=False)
        current = [head for head in self.heads_of(applied) if head in branch]
        if len(current) > 1:
            raise MultipleHeadsError(
                f"branch '{name}' has multiple current heads ({_listing(current)}), so "
                f"'{ident}' is ambiguous; use '<rev>{steps:+d}', e.g. '{current[0]}{steps:+d}'"
            )
        if current:
            return self._walk(current[0], steps, ident)
        if steps <= 0:
            raise RevisionError(
                f"relative revision {ident} goes past base: no revision of branch '{name}' "
                "is applied"
            )
        # Nothing of the branch is applied: its first step is the labelled revision itself.
        return self._walk(root, steps - 1, ident)

    def _walk(self, start: str | None, steps: int, ident: str) -> tuple[str, ...]:
        """Follow `steps` down_revision edges from start (None = base); one choice per step."""
        position = start
        for _ in range(abs(steps)):
            if steps > 0:
                options = self._revs[position].nextrev if position is not None else self.bases
                if not options:
                    past = f"head {position}" if position else "head (there are no revisions)"
                    raise RevisionError(f"relative revision {ident} goes past {past}")
                if len(options) > 1:
                    what = f"revision {position} has" if position else "the graph has"
                    kind = "children" if position else "bases"
                    raise MultipleHeadsError(
                        f"{what} several {kind} ({_listing(options)}), so '{ident}' is "
                        f"ambiguous; name the one you mean, e.g. 'upgrade {options[0]}'"
                    )
                position = options[0]
            else:
                if position is None:
                    raise RevisionError(f"relative revision {ident} goes past base")
                parents = self._revs[position].down_revision
                if len(parents) > 1:
                    raise MultipleHeadsError(
                        f"'{ident}' is ambiguous: revision {position} is a merge of "
                        f"{_listing(parents)}; use {_either([f'downgrade {p}' for p in parents])}"
                    )
                position = parents[0] if parents else None
        return (position,) if position else ()

    # -- plans -------------------------------------------------------------------------------

    def plan_upgrade(self, applied: Collection[str], target: str) -> list[Revision]:
        """Revisions to apply, in order, to reach target; [] when target is already reached."""
        done = self._check_applied(applied)
        needed = self.ancestors(self.resolve(target, done)) - done
        return [self._revs[rev_id] for rev_id in self.topological(needed)]

    def plan_downgrade(self, applied: Collection[str], target: str) -> list[Revision]:
        """Revisions to un-apply, children first, to go back to target ('base' = everything).

        Everything applied that descends from the target (dependents included) goes, except what
        the target itself needs; other branches stay.
        """
        done = self._check_applied(applied)
        targets = self.resolve(target, done)
        if not targets:
            remove = set(done)
        else:
            for rev_id in targets:
                if rev_id not in done and not self.descendants(rev_id) & done:
                    current = _listing(self.heads_of(done)) or "none"
                    raise RevisionError(
                        f"revision {rev_id} is not applied; nothing to downgrade to "
                        f"(current heads: {current})"
                    )
            remove = (self.descendants(targets) & done) - self.ancestors(targets)
        return [self._revs[rev_id] for rev_id in reversed(self.topological(remove))]

    def history(self, spec: str | None = None, applied: Collection[str] = ()) -> list[Revision]:
        """Revisions newest first: all, one identifier's, or a range "lower:upper".

        A range holds descendants of lower and ancestors of upper, both inclusive; an empty lower
        means base and an empty upper means heads.
        """
        if spec is None:
            selected = set(self._revs)
        elif ":" in spec:
            lower, _, upper = spec.partition(":")
            low = self.resolve(lower, applied) if lower.strip() else ()
            up = self.resolve(upper, applied) if upper.strip() else self.heads
            below_upper = self.ancestors(up)
            if low and up and not below_upper.intersection(low):
                raise RevisionError(
                    f"'{lower}' is not an ancestor of '{upper}', so the range '{spec}' is empty; "
                    "write it as lower:upper"
                )
            selected = below_upper & (self.descendants(low) if low else set(self._revs))
        else:
            selected = set(self.resolve(spec, applied))
        return [self._revs[rev_id] for rev_id in reversed(self.topological(selected))]
