"""Targets that cannot be reached: revision identifiers that resolve to nothing (or to too much),
stores that are not configured or not running. Refused in one line before the first write of the
whole plan, so an earlier revision of the same command is not applied either."""

from __future__ import annotations

import pytest

from tests.conftest import closed_port

ADD = 'op.add_field("docs", "x", default=1)'


def two_branches(project) -> None:
    project.revision("b1x", ADD)
    project.revision("b1y", 'op.add_field("docs", "y", default=2)')


IDENTIFIERS = {
    "an unknown revision": (None, ("upgrade", "zzz"), "no revision matches 'zzz'"),
    "an ambiguous prefix": (two_branches, ("upgrade", "b1"), "b1x"),
    "head among several heads": (two_branches, ("upgrade", "head"), "multiple heads"),
    "an unknown branch label": (None, ("upgrade", "nolabel@head"), "nolabel"),
    "a relative step past head": (None, ("upgrade", "+5"), "goes past"),
    "a relative step past base": (None, ("downgrade", "-5"), "goes past base"),
    "a downgrade to a revision that is not applied": (lambda p: p.revision("a1", ADD), ("downgrade", "a1"),
                                                      "revision a1 is not applied"),
    "a relative step from an unknown revision": (None, ("upgrade", "zzz+1"), "zzz"),
    "a stamp to an unknown revision": (None, ("stamp", "zzz"), "zzz"),
    "a history range the wrong way round": (lambda p: p.revision("a1", ADD), ("history", "-r", "a1:a0"),
                                            "is not an ancestor"),
    "show of an unknown revision": (None, ("show", "nope"), "no revision matches 'nope'"),
    "a merge of one head": (None, ("merge", "-m", "m"), "a merge needs at least two revisions"),
    "a revision id with spaces": (None, ("revision", "-m", "x", "--rev-id", "a b"), "use letters, digits"),
    "a revision id that exists": (None, ("revision", "-m", "x", "--rev-id", "a0"), "already exists"),
    "a revision on an unknown head": (None, ("revision", "-m", "x", "--head", "zzz"), "zzz"),
}


@pytest.mark.parametrize("setup, args, expected", IDENTIFIERS.values(), ids=IDENTIFIERS.keys())
def test_a_target_that_resolves_to_nothing_or_too_much_is_refused(project, setup, args, expected):
    if setup is not None:
        setup(project)
    files = sorted(project.versions.iterdir())
    project.fails(*args, expect=expected)
    assert sorted(project.versions.iterdir()) == files


DOWN = {
    "redis": lambda port: {"backend": "redis", "url": f"redis://127.0.0.1:{port}"},
    "chroma": lambda port: {"backend": "chroma", "url": f"http://127.0.0.1:{port}"},
    "qdrant": lambda port: {"backend": "qdrant", "url": f"http://127.0.0.1:{port}"},
}


def add_store(project, name: str, options: dict[str, str]) -> None:
    with project.ini.open("a", encoding="utf-8") as ini:
        ini.write(f"\n[store:{name}]\n" + "".join(f"{key} = {value}\n" for key, value in options.items()))


@pytest.mark.parametrize("kind", DOWN.keys())
def test_a_store_that_is_down_is_refused_in_one_line(project, kind):
    with closed_port() as port:
        options = DOWN[kind](port)
        add_store(project, "remote", options)
        project.revision("a1", 'op.create_collection("remote:more", dim=4)')
        project.fails("-x", "retries=0", "upgrade", "head", expect=options["url"].split("//")[1])


def test_a_store_missing_from_vecflow_ini_in_a_later_revision_stops_before_the_first_write(project):
    project.revision("a1", ADD)
    project.revision("a2", 'op.create_collection("archive:docs", dim=4)', down="a1")
    project.fails("upgrade", "head", expect="no [store:archive] section")
    assert project.attempts("a1") == []


def test_a_store_that_is_down_in_a_later_revision_stops_before_the_first_write(project):
    with closed_port() as port:
        url = DOWN["redis"](port)["url"]
        add_store(project, "remote", {"backend": "redis", "url": url})
        project.revision("a1", ADD)
        project.revision("a2", 'op.copy_collection("docs", "remote:docs")', down="a1")
        project.fails("-x", "retries=0", "upgrade", "head", expect=url.split("//")[1])
    assert project.attempts("a1") == []


def test_the_real_cli_refuses_an_unknown_store_of_a_later_revision_in_one_line(project):
    project.revision("a1", ADD)
    project.revision("a2", 'op.drop_field("archive:docs", "n")', down="a1")
    project.fails("upgrade", "head", expect="no [store:archive] section", via_subprocess=True)
