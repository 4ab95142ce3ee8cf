"""User code that calls sys.exit() or raises KeyboardInterrupt while a step runs: one clean line,
exit 1 (vecflow used to exit 0 with the migration unfinished), the attempt recorded as failed so
a rerun resumes it, and the store as it was."""

from __future__ import annotations

import itertools

import pytest

_unique = itertools.count()

EXITS = {"sys.exit(3)": ("import sys\n", "sys.exit(3)", "called sys.exit(3)"),
         "KeyboardInterrupt": ("", "raise KeyboardInterrupt", "was interrupted (KeyboardInterrupt)")}

STEPS = {
    "an add_field function": ("def stop(meta):\n    {stop}\n", 'op.add_field("docs", "x", function=stop)',
                              "add_field docs.x: stop"),
    "a map_records function": ("def stop(page):\n    {stop}\n", 'op.map_records("docs", function=stop)',
                               "map_records docs: stop"),
    "a schema's validator": ("import pydantic\n\nclass Doc(pydantic.BaseModel):\n    n: int\n\n"
                             "    @pydantic.field_validator('n')\n    @classmethod\n"
                             "    def stop(cls, value):\n        {stop}\n",
                             'op.apply_schema(collection="docs", schema=Doc)', "the schema Doc"),
    "an embedder": ("def stop(texts):\n    {stop}\n", 'op.reembed("docs", embedder=stop)', "embedder"),
    "an embedder class": ("class Stop:\n    def __init__(self):\n        {stop}\n\n"
                          "    def __call__(self, texts):\n        return [[1.0] * 4 for _ in texts]\n",
                          'op.reembed("docs", embedder=Stop)', "embedder"),
}


@pytest.mark.parametrize("prelude, stop, said", EXITS.values(), ids=EXITS.keys())
@pytest.mark.parametrize("definition, step, where", STEPS.values(), ids=STEPS.keys())
def test_user_code_that_exits_stops_the_step_in_one_line(project, definition, step, where, prelude, stop, said):
    project.revision("a1", step, extra=prelude + definition.format(stop=stop))
    project.fails("upgrade", "head", expect=(where, said))
    assert project.attempts("a1") == ["failed"]


@pytest.mark.parametrize("prelude, stop, said", EXITS.values(), ids=EXITS.keys())
def test_a_dotted_path_whose_module_exits_on_import_stops_in_one_line(project, prelude, stop, said):
    module = f"exits_on_import_{next(_unique)}"
    project.write(f"{module}.py", f"{prelude}{stop}\n\ndef f(meta):\n    return 1\n", folder=project.root)
    project.revision("a1", f'op.add_field("docs", "x", function="{module}:f")')
    project.fails("upgrade", "head", expect=(f"importing '{module}:f'", said))


def test_a_downgrade_that_exits_while_planned_is_refused_before_any_step(project):
    project.revision("a1", 'op.add_field("docs", "x", default=1)', extra="import sys\n",
                     downgrade="sys.exit('no way back')")
    project.succeeds("upgrade", "head")
    project.fails("downgrade", "a0", expect="downgrade() called sys.exit('no way back')")
    assert project.applied() == {"a0", "a1"}


def test_the_real_cli_exits_1_and_the_rerun_resumes_the_attempt(project):
    script = project.revision("a1", 'op.add_field("docs", "x", function=value)',
                              extra="import sys\n\ndef value(meta):\n    sys.exit(0)\n")
    project.fails("upgrade", "head", expect="add_field docs.x: value called sys.exit(0)", via_subprocess=True)
    assert project.attempts("a1") == ["failed"] and project.applied() == {"a0"}
    script.write_text(script.read_text().replace("sys.exit(0)", "return meta['n'] * 2"))
    out = project.succeeds("upgrade", "head", via_subprocess=True)
    assert "Resuming upgrade a1" in out and project.applied() == {"a0", "a1"}
    assert project.attempts("a1") == ["done"]
