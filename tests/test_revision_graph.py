"""The revision graph, on hand-built graphs: no files, no backends.

Graphs used below (arrows point from parent to child):

    linear      a -> b -> c -> d
    branched    r -> a1 -> a2           a1 is labelled "alpha", b1 "beta"
                r -> b1 -> b2
    merged      r -> a -> m -> n        m merges a and b
                r -> b -> m
    dependent   x1 -> x2                y2 depends_on x2; x1 is labelled "xs", y1 "ys"
                y1 -> y2
"""

from __future__ import annotations

import pytest

from vecflow.errors import AmbiguousRevisionError, MultipleHeadsError, RevisionError
from vecflow.script.revision import Revision, RevisionMap, normalize_ids


def rev(rev_id: str, down: str | tuple[str, ...] | None = None, **kwargs: object) -> Revision:
    return Revision(rev_id, down, path=f"versions/{rev_id}.py", **kwargs)  # type: ignore[arg-type]


def ids(revisions: list[Revision]) -> list[str]:
    return [r.revision for r in revisions]


@pytest.fixture
def linear() -> RevisionMap:
    return RevisionMap([rev("a"), rev("b", "a"), rev("c", "b"), rev("d", "c")])


@pytest.fixture
def branched() -> RevisionMap:
    return RevisionMap([
        rev("r"),
        rev("a1", "r", branch_labels="alpha"),
        rev("a2", "a1"),
        rev("b1", "r", branch_labels=["beta"]),
        rev("b2", "b1"),
    ])


@pytest.fixture
def merged() -> RevisionMap:
    return RevisionMap([rev("r"), rev("a", "r"), rev("b", "r"), rev("m", ("a", "b")),
                        rev("n", "m")])


@pytest.fixture
def dependent() -> RevisionMap:
    return RevisionMap([
        rev("x1", branch_labels="xs"),
        rev("x2", "x1"),
        rev("y1", branch_labels="ys"),
        rev("y2", "y1", depends_on="x2"),
    ])


# -- Revision -----------------------------------------------------------------------------------


def test_normalize_ids_turns_none_string_and_list_into_tuples() -> None:
    assert normalize_ids(None) == ()
    assert normalize_ids("a") == ("a",)
    assert normalize_ids(["a", "b"]) == ("a", "b")
    assert normalize_ids(("a",)) == ("a",)


def test_normalize_ids_rejects_non_string_ids() -> None:
    with pytest.raises(TypeError, match="12"):
        normalize_ids([12])  # type: ignore[list-item]


def test_revision_normalises_its_edges_and_knows_base_and_merge() -> None:
    base = Revision("a", None, branch_labels="main", depends_on=["z"])  # type: ignore[arg-type]
    merge = Revision("m", ["a", "b"])  # type: ignore[arg-type]
    assert base.down_revision == () and base.branch_labels == ("main",)
    assert base.depends_on == ("z",)
    assert base.is_base and not base.is_merge
    assert merge.down_revision == ("a", "b") and merge.is_merge and not merge.is_base


def test_revision_with_integer_down_revision_names_its_file() -> None:
    with pytest.raises(RevisionError, match=r"versions/b\.py: down_revision .*12.*quote"):
        Revision("b", 12, path="versions/b.py")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad_id", ["a-1", "a+1", "a@b", "a:b", "a b", ""])
def test_revision_id_with_reserved_character_is_rejected(bad_id: str) -> None:
    with pytest.raises(RevisionError, match=r"versions/x\.py: revision id .* is not valid"):
        Revision(bad_id, path="versions/x.py")


@pytest.mark.parametrize("word", ["head", "heads", "base", "current"])
def test_reserved_word_cannot_be_a_revision_id_or_branch_label(word: str) -> None:
    with pytest.raises(RevisionError, match="reserved word"):
        Revision(word)
    with pytest.raises(RevisionError, match="reserved word"):
        Revision("a", branch_labels=(word,))


@pytest.mark.parametrize("label", ["a@b", "a:b", "two words", "+1", "-2"])
def test_branch_label_that_would_be_misread_is_rejected(label: str) -> None:
    with pytest.raises(RevisionError, match=r"branch label .* is not valid"):
        Revision("a", branch_labels=(label,))


def test_branch_label_may_contain_a_hyphen() -> None:
    graph = RevisionMap([rev("a", branch_labels="search-v2"), rev("b", "a")])
    assert graph.resolve("search-v2") == ("a",)
    assert graph.resolve("search-v2@head") == ("b",)


def test_down_revision_naming_the_same_parent_twice_is_rejected() -> None:
    with pytest.raises(RevisionError, match="repeats"):
        Revision("m", ("a", "a"))


# -- building and validating the map -------------------------------------------------------------


def test_map_fills_children_heads_and_bases_sorted(branched: RevisionMap) -> None:
    assert branched.get("r").nextrev == ("a1", "b1")
    assert branched.get("a2").nextrev == ()
    assert branched.heads == ("a2", "b2")
    assert branched.bases == ("r",)


def test_merge_has_two_parents_and_one_head(merged: RevisionMap) -> None:
    assert merged.get("a").nextrev == ("m",) and merged.get("b").nextrev == ("m",)
    assert merged.heads == ("n",)


def test_dependency_does_not_make_a_child_so_both_branches_keep_a_head(
    dependent: RevisionMap,
) -> None:
    assert dependent.get("x2").nextrev == ()
    assert dependent.heads == ("x2", "y2")
    assert dependent.bases == ("x1", "y1")


def test_empty_map_has_no_heads_and_resolves_head_to_base() -> None:
    graph = RevisionMap([])
    assert len(graph) == 0 and graph.heads == () and graph.bases == ()
    assert graph.resolve("head") == ()
    assert graph.plan_upgrade(set(), "heads") == []


def test_duplicate_revision_id_names_both_files() -> None:
    first = Revision("abc", path="a.py")
    second = Revision("abc", path="b.py")
    with pytest.raises(RevisionError, match=r"revision 'abc' is defined twice: a\.py and b\.py"):
        RevisionMap([first, second])


def test_unknown_down_revision_names_the_file() -> None:
    with pytest.raises(
        RevisionError, match=r"versions/b\.py: down_revision 'zzz' is not a known revision"
    ):
        RevisionMap([rev("a"), rev("b", "zzz")])


def test_down_revision_naming_a_branch_label_asks_for_the_id() -> None:
    with pytest.raises(RevisionError, match="it is a branch label; use its revision id"):
        RevisionMap([rev("a", branch_labels="main"), rev("b", "main")])


def test_unknown_depends_on_names_the_file() -> None:
    with pytest.raises(
        RevisionError, match=r"versions/b\.py: depends_on 'zzz' is not a known revision"
    ):
        RevisionMap([rev("a"), rev("b", "a", depends_on="zzz")])


def test_depends_on_may_name_a_branch_label() -> None:
    graph = RevisionMap([rev("a", branch_labels="lib"), rev("b"), rev("c", "b", depends_on="lib")])
    assert graph.ancestors("c") == {"a", "b", "c"}


def test_cycle_lists_its_revisions_and_files() -> None:
    revisions = [rev("base0"), rev("a", "c"), rev("b", "a"), rev("c", "b")]
    with pytest.raises(RevisionError, match="cycle") as caught:
        RevisionMap(revisions)
    message = str(caught.value)
    for rev_id in ("a", "b", "c"):
        assert f"versions/{rev_id}.py" in message
    assert "base0" not in message


def test_revision_that_is_its_own_parent_is_a_cycle() -> None:
    with pytest.raises(RevisionError, match=r"cycle: a \(versions/a\.py\) -> a"):
        RevisionMap([rev("a", "a")])


def test_dependency_on_a_descendant_is_a_cycle() -> None:
    with pytest.raises(RevisionError, match=r"cycle.*versions/a\.py.*versions/b\.py"):
        RevisionMap([rev("a", depends_on="b"), rev("b", "a")])


def test_branch_label_declared_twice_names_both_files() -> None:
    with pytest.raises(
        RevisionError,
        match=r"branch label 'main' is declared twice: versions/a\.py and versions/b\.py",
    ):
        RevisionMap([rev("a", branch_labels="main"), rev("b", branch_labels="main")])


def test_branch_label_equal_to_a_revision_id_is_rejected() -> None:
    with pytest.raises(
        RevisionError, match=r"versions/b\.py: branch label 'a' is also the id of revision a"
    ):
        RevisionMap([rev("a"), rev("b", branch_labels="a")])


# -- lookup and graph queries -------------------------------------------------------------------


def test_get_returns_the_revision_with_that_exact_id(linear: RevisionMap) -> None:
    assert linear.get("c").down_revision == ("b",)
    with pytest.raises(RevisionError, match="no revision has the id 'zz'"):
        linear.get("zz")


def test_map_supports_in_len_and_iterates_in_topological_order(merged: RevisionMap) -> None:
    assert "m" in merged and "zz" not in merged
    assert len(merged) == 5
    assert [r.revision for r in merged] == ["r", "a", "b", "m", "n"]


def test_ancestors_and_descendants_are_inclusive(branched: RevisionMap) -> None:
    assert branched.ancestors("a2") == {"r", "a1", "a2"}
    assert branched.descendants("b1") == {"b1", "b2"}
    assert branched.ancestors(["a2", "b1"]) == {"r", "a1", "a2", "b1"}
    assert branched.ancestors(()) == set()


def test_dependencies_count_as_ancestry_unless_excluded(dependent: RevisionMap) -> None:
    assert dependent.ancestors("y2") == {"x1", "x2", "y1", "y2"}
    assert dependent.ancestors("y2", include_dependencies=False) == {"y1", "y2"}
    assert dependent.descendants("x1") == {"x1", "x2", "y2"}
    assert dependent.descendants("x1", include_dependencies=False) == {"x1", "x2"}


def test_queries_reject_unknown_ids(linear: RevisionMap) -> None:
    with pytest.raises(RevisionError, match="'zz'"):
        linear.ancestors("zz")


def test_topological_puts_parents_first_and_breaks_ties_by_id(
    branched: RevisionMap, dependent: RevisionMap
) -> None:
    assert branched.topological({"b2", "a2", "r", "b1", "a1"}) == ["r", "a1", "a2", "b1", "b2"]
    assert dependent.topological({"y2", "x2", "y1", "x1"}) == ["x1", "x2", "y1", "y2"]


def test_topological_of_a_subset_keeps_transitive_order(linear: RevisionMap) -> None:
    assert linear.topological(["d", "a"]) == ["a", "d"]


def test_heads_of_applied_set(linear: RevisionMap, branched: RevisionMap,
                              merged: RevisionMap) -> None:
    assert linear.heads_of(set()) == ()
    assert linear.heads_of({"a", "b"}) == ("b",)
    assert branched.heads_of({"r", "a1", "b1", "b2"}) == ("a1", "b2")
    assert merged.heads_of({"r", "a", "b"}) == ("a", "b")
    assert merged.heads_of({"r", "a", "b", "m"}) == ("m",)


def test_applied_id_missing_from_the_graph_is_reported(linear: RevisionMap) -> None:
    with pytest.raises(RevisionError, match=r"applied revision 'gone' .* script deleted"):
        linear.heads_of({"a", "gone"})


def test_branch_points_are_revisions_with_several_children(
    branched: RevisionMap, linear: RevisionMap
) -> None:
    assert ids(branched.branch_points()) == ["r"]
    assert linear.branch_points() == []


# -- resolving identifiers -----------------------------------------------------------------------


@pytest.fixture
def hexed() -> RevisionMap:
    return RevisionMap([rev("ab12"), rev("ab34", "ab12"), rev("cd56", "ab34")])


def test_full_id_and_unique_prefix_resolve(hexed: RevisionMap) -> None:
    assert hexed.resolve("ab34") == ("ab34",)
    assert hexed.resolve("ab3") == ("ab34",)
    assert hexed.resolve("c") == ("cd56",)


def test_ambiguous_prefix_lists_candidates_and_asks_for_more_characters(
    hexed: RevisionMap,
) -> None:
    with pytest.raises(
        AmbiguousRevisionError, match="'ab' matches ab12, ab34; use more characters"
    ):
        hexed.resolve("ab")


def test_unknown_identifier_says_nothing_matches(hexed: RevisionMap) -> None:
    with pytest.raises(RevisionError, match="no revision matches 'xyz'"):
        hexed.resolve("xyz")


def test_branch_label_resolves_to_the_revision_declaring_it(branched: RevisionMap) -> None:
    assert branched.resolve("beta") == ("b1",)


def test_keywords(branched: RevisionMap, linear: RevisionMap) -> None:
    assert linear.resolve("head") == ("d",)
    assert branched.resolve("heads") == ("a2", "b2")
    assert branched.resolve("base") == ()
    assert branched.resolve("current", {"r", "a1"}) == ("a1",)
    assert branched.resolve("current") == ()


def test_head_with_two_heads_lists_them_and_says_what_to_type(branched: RevisionMap) -> None:
    with pytest.raises(MultipleHeadsError) as caught:
        branched.resolve("head")
    message = str(caught.value)
    assert "multiple heads are present (a2, b2)" in message
    assert "'heads'" in message and "'<branch>@head'" in message and "revision id" in message


def test_label_at_head_is_the_head_of_that_branch(branched: RevisionMap) -> None:
    assert branched.resolve("alpha@head") == ("a2",)
    assert branched.resolve("b1@head") == ("b2",)


def test_label_at_head_with_several_heads_lists_candidates() -> None:
    graph = RevisionMap([rev("r", branch_labels="main"), rev("a", "r"), rev("b", "r")])
    with pytest.raises(MultipleHeadsError, match=r"branch 'main' has multiple heads \(a, b\)"):
        graph.resolve("main@head")


def test_unreadable_text_after_at_is_reported(branched: RevisionMap) -> None:
    with pytest.raises(RevisionError, match="after '@' expected 'head', '\\+N' or '-N'"):
        branched.resolve("alpha@tip")


def test_plus_and_minus_n_count_from_the_single_current_head(linear: RevisionMap) -> None:
    assert linear.resolve("+1", {"a"}) == ("b",)
    assert linear.resolve("+2", {"a", "b"}) == ("d",)
    assert linear.resolve("-1", {"a", "b", "c"}) == ("b",)
    assert linear.resolve("+1", set()) == ("a",)


def test_minus_n_reaching_exactly_base_means_base(linear: RevisionMap) -> None:
    assert linear.resolve("-2", {"a", "b"}) == ()


def test_minus_n_past_base_is_an_error(linear: RevisionMap) -> None:
    with pytest.raises(RevisionError, match="relative revision -3 goes past base"):
        linear.resolve("-3", {"a", "b"})


def test_plus_n_past_a_head_is_an_error(linear: RevisionMap) -> None:
    with pytest.raises(RevisionError, match=r"relative revision \+3 goes past head d"):
        linear.resolve("+3", {"a", "b"})


def test_relative_step_with_several_current_heads_suggests_rev_or_label_form(
    branched: RevisionMap,
) -> None:
    with pytest.raises(MultipleHeadsError) as caught:
        branched.resolve("+1", {"r", "a1", "b1"})
    message = str(caught.value)
    assert "(a1, b1)" in message
    assert "'<rev>+1'" in message and "'<label>@+1'" in message and "'a1+1'" in message


def test_rev_plus_and_minus_n_count_from_that_revision(linear: RevisionMap) -> None:
    assert linear.resolve("b+2") == ("d",)
    assert linear.resolve("d-3") == ("a",)
    assert linear.resolve("d-4") == ()
    assert linear.resolve("head-1") == ("c",)
    assert linear.resolve("base+1") == ("a",)


def test_rev_step_from_several_revisions_is_ambiguous(branched: RevisionMap) -> None:
    with pytest.raises(MultipleHeadsError, match=r"'heads' in 'heads-1' means several .*a2, b2"):
        branched.resolve("heads-1")


def test_plus_one_at_a_branch_point_lists_children_and_suggests_an_id(
    branched: RevisionMap,
) -> None:
    with pytest.raises(MultipleHeadsError) as caught:
        branched.resolve("+1", {"r"})
    message = str(caught.value)
    assert "revision r has several children (a1, b1)" in message
    assert "'upgrade a1'" in message


def test_plus_one_from_base_with_several_bases_is_ambiguous(dependent: RevisionMap) -> None:
    with pytest.raises(MultipleHeadsError, match=r"several bases \(x1, y1\)"):
        dependent.resolve("+1")


def test_minus_one_from_a_merge_names_both_parents_and_what_to_type(merged: RevisionMap) -> None:
    with pytest.raises(MultipleHeadsError) as caught:
        merged.resolve("-1", {"r", "a", "b", "m"})
    assert "revision m is a merge of a, b; use 'downgrade a' or 'downgrade b'" in str(caught.value)


def test_label_relative_steps_count_from_the_branch_current_head(branched: RevisionMap) -> None:
    applied = {"r", "a1", "b1"}
    assert branched.resolve("alpha@+1", applied) == ("a2",)
    assert branched.resolve("beta@+1", applied) == ("b2",)
    assert branched.resolve("beta@-1", applied) == ("r",)
    assert branched.resolve("alpha@-2", {"r", "a1", "a2"}) == ("r",)


def test_label_plus_n_with_nothing_of_the_branch_applied_starts_at_the_label(
    branched: RevisionMap,
) -> None:
    assert branched.resolve("beta@+1", {"r", "a1"}) == ("b1",)
    assert branched.resolve("beta@+2", {"r"}) == ("b2",)


def test_label_minus_n_with_nothing_of_the_branch_applied_goes_past_base(
    branched: RevisionMap,
) -> None:
    with pytest.raises(RevisionError, match=r"beta@-1 goes past base.*branch 'beta'"):
        branched.resolve("beta@-1", {"r", "a1"})


def test_label_step_with_several_current_heads_in_the_branch_is_ambiguous() -> None:
    graph = RevisionMap([rev("r", branch_labels="main"), rev("a", "r"), rev("b", "r")])
    with pytest.raises(MultipleHeadsError, match=r"multiple current heads \(a, b\).*'a\+1'"):
        graph.resolve("main@+1", {"r", "a", "b"})


# -- upgrade plans -------------------------------------------------------------------------------


def test_upgrade_from_nothing_applies_everything_in_order(linear: RevisionMap) -> None:
    assert ids(linear.plan_upgrade(set(), "head")) == ["a", "b", "c", "d"]


def test_upgrade_applies_only_what_is_missing(linear: RevisionMap) -> None:
    assert ids(linear.plan_upgrade({"a", "b"}, "heads")) == ["c", "d"]
    assert ids(linear.plan_upgrade({"a", "b"}, "+1")) == ["c"]


def test_upgrade_to_an_applied_or_earlier_revision_is_a_no_op(linear: RevisionMap) -> None:
    assert linear.plan_upgrade({"a", "b", "c"}, "b") == []
    assert linear.plan_upgrade({"a", "b", "c"}, "c") == []
    assert linear.plan_upgrade({"a", "b", "c"}, "base") == []


def test_upgrade_heads_applies_every_branch(branched: RevisionMap) -> None:
    assert ids(branched.plan_upgrade({"r"}, "heads")) == ["a1", "a2", "b1", "b2"]


def test_upgrade_one_branch_leaves_the_other(branched: RevisionMap) -> None:
    assert ids(branched.plan_upgrade({"r"}, "beta@head")) == ["b1", "b2"]


def test_upgrade_through_a_merge_applies_both_parents_first(merged: RevisionMap) -> None:
    assert ids(merged.plan_upgrade(set(), "head")) == ["r", "a", "b", "m", "n"]
    assert ids(merged.plan_upgrade({"r", "a"}, "m")) == ["b", "m"]


def test_upgrade_pulls_in_the_dependency(dependent: RevisionMap) -> None:
    assert ids(dependent.plan_upgrade(set(), "y2")) == ["x1", "x2", "y1", "y2"]
    assert ids(dependent.plan_upgrade({"y1"}, "ys@head")) == ["x1", "x2", "y2"]


def test_upgrade_rejects_an_applied_set_with_unknown_ids(linear: RevisionMap) -> None:
    with pytest.raises(RevisionError, match="'gone'"):
        linear.plan_upgrade({"gone"}, "head")


# -- downgrade plans -----------------------------------------------------------------------------

ALL_LINEAR = {"a", "b", "c", "d"}


def test_downgrade_to_base_un_applies_everything_children_first(linear: RevisionMap) -> None:
    assert ids(linear.plan_downgrade(ALL_LINEAR, "base")) == ["d", "c", "b", "a"]


def test_downgrade_to_a_revision_keeps_it(linear: RevisionMap) -> None:
    assert ids(linear.plan_downgrade(ALL_LINEAR, "b")) == ["d", "c"]
    assert linear.plan_downgrade(ALL_LINEAR, "d") == []


def test_downgrade_relative_steps(linear: RevisionMap) -> None:
    assert ids(linear.plan_downgrade(ALL_LINEAR, "-1")) == ["d"]
    assert ids(linear.plan_downgrade(ALL_LINEAR, "-2")) == ["d", "c"]
    assert ids(linear.plan_downgrade(ALL_LINEAR, "-4")) == ["d", "c", "b", "a"]
    with pytest.raises(RevisionError, match="relative revision -5 goes past base"):
        linear.plan_downgrade(ALL_LINEAR, "-5")


def test_downgrade_to_an_unapplied_revision_is_an_error(linear: RevisionMap) -> None:
    with pytest.raises(RevisionError, match=r"revision d is not applied; nothing to downgrade to"):
        linear.plan_downgrade({"a", "b"}, "d")


def test_downgrade_one_branch_leaves_the_other(branched: RevisionMap) -> None:
    applied = {"r", "a1", "a2", "b1", "b2"}
    assert ids(branched.plan_downgrade(applied, "alpha@-1")) == ["a2"]
    assert ids(branched.plan_downgrade(applied, "r")) == ["b2", "b1", "a2", "a1"]
    assert ids(branched.plan_downgrade(applied, "b1")) == ["b2"]


def test_downgrade_minus_one_with_two_current_heads_is_ambiguous(branched: RevisionMap) -> None:
    with pytest.raises(MultipleHeadsError, match=r"\(a2, b2\).*'a2-1'"):
        branched.plan_downgrade({"r", "a1", "a2", "b1", "b2"}, "-1")


def test_downgrade_minus_one_from_a_merge_names_both_parents(merged: RevisionMap) -> None:
    with pytest.raises(MultipleHeadsError, match="merge of a, b; use 'downgrade a' or"):
        merged.plan_downgrade({"r", "a", "b", "m"}, "-1")


def test_downgrade_to_one_parent_of_a_merge_removes_only_the_merge(merged: RevisionMap) -> None:
    assert ids(merged.plan_downgrade({"r", "a", "b", "m"}, "a")) == ["m"]
    assert ids(merged.plan_downgrade({"r", "a", "b", "m", "n"}, "b")) == ["n", "m"]
    assert merged.heads_of({"r", "a", "b"}) == ("a", "b")


def test_downgrade_below_a_merge_removes_the_branch_and_the_merge(merged: RevisionMap) -> None:
    assert ids(merged.plan_downgrade({"r", "a", "b", "m", "n"}, "r")) == ["n", "m", "b", "a"]


def test_downgrading_a_dependency_also_removes_its_dependents(dependent: RevisionMap) -> None:
    applied = {"x1", "x2", "y1", "y2"}
    assert ids(dependent.plan_downgrade(applied, "x1")) == ["y2", "x2"]
    assert ids(dependent.plan_downgrade(applied, "xs@-1")) == ["y2", "x2"]
    assert ids(dependent.plan_downgrade(applied, "y1")) == ["y2"]


def test_downgrade_to_a_revision_keeps_its_dependencies(dependent: RevisionMap) -> None:
    applied = {"x1", "x2", "y1", "y2"}
    assert dependent.plan_downgrade(applied, "y2") == []


# -- history -------------------------------------------------------------------------------------


def test_history_lists_everything_newest_first(linear: RevisionMap, merged: RevisionMap) -> None:
    assert ids(linear.history()) == ["d", "c", "b", "a"]
    assert ids(merged.history()) == ["n", "m", "b", "a", "r"]


def test_history_range_is_inclusive_on_both_sides(linear: RevisionMap) -> None:
    assert ids(linear.history("b:c")) == ["c", "b"]
    assert ids(linear.history(":b")) == ["b", "a"]
    assert ids(linear.history("c:")) == ["d", "c"]
    assert ids(linear.history(":")) == ["d", "c", "b", "a"]
    assert ids(linear.history("base:head")) == ["d", "c", "b", "a"]


def test_history_range_with_current(linear: RevisionMap) -> None:
    applied = {"a", "b"}
    assert ids(linear.history("current:", applied)) == ["d", "c", "b"]
    assert ids(linear.history(":current", applied)) == ["b", "a"]
    assert ids(linear.history("current:heads", set())) == ["d", "c", "b", "a"]


def test_history_range_across_branches_and_merges(
    branched: RevisionMap, merged: RevisionMap
) -> None:
    assert ids(branched.history("r:heads")) == ["b2", "b1", "a2", "a1", "r"]
    assert ids(branched.history("beta:")) == ["b2", "b1"]
    assert ids(merged.history("a:n")) == ["n", "m", "a"]


def test_history_of_one_identifier(branched: RevisionMap) -> None:
    assert ids(branched.history("alpha")) == ["a1"]
    assert ids(branched.history("heads")) == ["b2", "a2"]


def test_history_range_in_the_wrong_direction_is_an_error(linear: RevisionMap) -> None:
    with pytest.raises(RevisionError, match="'d' is not an ancestor of 'b'"):
        linear.history("d:b")
