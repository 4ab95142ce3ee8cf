"""Broken revision scripts, Python and YAML: refused with the file (and line) named, before anything
runs. Each bad revision a1 sits on the applied a0, so "nothing written" covers a0's data too."""

from __future__ import annotations

import pytest

HEAD = 'revision = "a1"\ndown_revision = "a0"\n'
UPGRADE = "def upgrade(op):\n    op.add_field('docs', 'x', default=1)\n"

PYTHON = {
    "syntax error": (HEAD + "def upgrade(op)\n    pass\n", "a1_bad.py:3: syntax error"),
    "import of a missing module": ("import no_such_module_xyz\n" + HEAD + UPGRADE, "no_such_module_xyz"),
    "exception at import": (HEAD + "1 / 0\n" + UPGRADE, "a1_bad.py:3: loading the script raised ZeroDivisionError"),
    "sys.exit() at import": ("import sys\nsys.exit(0)\n" + HEAD + UPGRADE, "loading the script called sys.exit(0)"),
    "KeyboardInterrupt at import": ("raise KeyboardInterrupt\n" + HEAD + UPGRADE, "KeyboardInterrupt"),
    "no revision": ('down_revision = "a0"\n' + UPGRADE, "missing 'revision'"),
    "no down_revision": ('revision = "a1"\n' + UPGRADE, "missing 'down_revision'"),
    "no upgrade": (HEAD, "missing 'upgrade'"),
    "upgrade is not a function": (HEAD + "upgrade = 3\n", "must be functions"),
    "revision is a number": ('revision = 12\ndown_revision = "a0"\n' + UPGRADE, "revision must be a string"),
    "down_revision of numbers": ('revision = "a1"\ndown_revision = [1, 2]\n' + UPGRADE, "down_revision must be"),
    "revision id with a dash": ('revision = "a-1"\ndown_revision = "a0"\n' + UPGRADE, "revision id 'a-1'"),
    "reserved revision id": ('revision = "head"\ndown_revision = "a0"\n' + UPGRADE, "reserved word"),
    "irreversible is not a bool": (HEAD + 'irreversible = "false"\n' + UPGRADE, "irreversible must be True or False"),
    "unknown down_revision": ('revision = "a1"\ndown_revision = "zz"\n' + UPGRADE, "down_revision 'zz' is not a known"),
    "unknown op": (HEAD + "def upgrade(op):\n    op.renam_field('docs', 'n', 'm')\n", "did you mean 'rename_field'"),
    "op argument of the wrong type": (HEAD + "def upgrade(op):\n    op.create_collection('more', dim='four')\n",
                                      "a1_bad.py:4: upgrade(): create_collection: dim"),
    "unknown op argument": (HEAD + "def upgrade(op):\n    op.add_field('docs', 'x', defualt=1)\n",
                            "defualt: unknown argument"),
    "too many positional arguments": (HEAD + "def upgrade(op):\n    op.drop_field('docs', 'n', True, 1, 2)\n",
                                      "positional arguments"),
    "argument given twice": (HEAD + "def upgrade(op):\n    op.drop_field('docs', 'n', field='m')\n",
                             "given twice"),
    "bad jinja expression": (HEAD + "def upgrade(op):\n    op.set_field('docs', 'n', expression='n +* 1')\n",
                             "invalid jinja2 expression"),
    "bad metric": (HEAD + "def upgrade(op):\n    op.create_collection('more', dim=4, metric='hamming')\n",
                   "metric must be one of"),
    "upgrade() raises": (HEAD + "def upgrade(op):\n    raise ValueError('nope')\n",
                         "a1_bad.py:4: upgrade() raised ValueError: nope"),
    "upgrade() calls sys.exit()": (HEAD + "import sys\ndef upgrade(op):\n    sys.exit()\n",
                                   "upgrade() called sys.exit()"),
    "upgrade() raises KeyboardInterrupt": (HEAD + "def upgrade(op):\n    raise KeyboardInterrupt\n",
                                           "upgrade() was interrupted"),
    "irreversible step without downgrade()": (
        HEAD + "def upgrade(op):\n    op.drop_collection('docs', snapshot=False)\n", "cannot be reversed"),
    "empty file": ("", "missing 'revision'"),
    "binary file": (b"\x7fELF\x02\x01\x01\x00\x00\x00\xff\xfe\x00\x00", "a1_bad.py"),
    "not UTF-8": (b"revision = 'a1'\ndown_revision = 'a0'\nowner = 'caf\xe9'\n" + UPGRADE.encode(),
                  "a1_bad.py:3: syntax error"),
}


@pytest.mark.parametrize("source, expected", PYTHON.values(), ids=PYTHON.keys())
def test_a_broken_python_revision_is_refused_in_one_line(project, source, expected):
    project.write("a1_bad.py", source)
    project.fails("upgrade", "head", expect=expected)


YAML_HEAD = "revision: a1\ndown_revision: a0\n"

YAML = {
    "not a mapping": ("- revision: a1\n- upgrade: []\n", "a1_bad.yaml:1: a YAML revision is a mapping"),
    "unknown key": (YAML_HEAD + "upgrdae: []\nupgrade: []\n", "unknown key(s) upgrdae; a YAML revision has"),
    "tab indentation": (YAML_HEAD + "upgrade:\n\t- drop_field: {collection: docs, field: n}\n",
                        "a1_bad.yaml:4: invalid YAML"),
    "empty file": ("", "a1_bad.yaml:1: a YAML revision is a mapping"),
    "binary file": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8", "a1_bad.yaml:1: not UTF-8"),
    "not UTF-8": (b"revision: a1\ndown_revision: a0\nmessage: caf\xe9\nupgrade: []\n",
                  "a1_bad.yaml:3: not UTF-8"),
    "revision read as a number": ("revision: 0012\ndown_revision: a0\nupgrade: []\n", "quote revision ids"),
    "no upgrade": (YAML_HEAD, "upgrade"),
    "upgrade is not a list": (YAML_HEAD + "upgrade: {drop_field: {collection: docs, field: n}}\n", "upgrade"),
    "step is not a mapping": (YAML_HEAD + "upgrade:\n  - drop_field\n", "each step is a mapping"),
    "step with two ops": (YAML_HEAD + "upgrade:\n  - drop_field: {collection: docs, field: n}\n"
                          "    add_field: {collection: docs, field: m}\n", "a1_bad.yaml:4: each step"),
    "step arguments are a list": (YAML_HEAD + "upgrade:\n  - drop_field: [docs, n]\n",
                                  "arguments must be a mapping"),
    "unknown op": (YAML_HEAD + "upgrade:\n  - drop_feild: {collection: docs, field: n}\n",
                   "a1_bad.yaml:4: unknown op 'drop_feild'"),
    "wrong argument type": (YAML_HEAD + "upgrade:\n  - create_collection: {collection: more, dim: [4]}\n",
                            "a1_bad.yaml:4: create_collection: dim"),
    "missing argument": (YAML_HEAD + "upgrade:\n  - drop_field: {collection: docs}\n", "field: Field required"),
    "repeated key": (YAML_HEAD + "upgrade:\n  - drop_field: {collection: docs, field: n}\nupgrade: []\n",
                     "a1_bad.yaml:5: invalid YAML: key 'upgrade' is repeated (first on line 3)"),
    "python tag": (YAML_HEAD + "upgrade:\n  - !!python/object/apply:os.system [echo hi]\n", "invalid YAML"),
    "unclosed bracket": (YAML_HEAD + "upgrade: [\n", "invalid YAML"),
}


@pytest.mark.parametrize("source, expected", YAML.values(), ids=YAML.keys())
def test_a_broken_yaml_revision_is_refused_in_one_line(project, source, expected):
    project.write("a1_bad.yaml", source)
    project.fails("upgrade", "head", expect=expected)


GRAPHS = {
    "duplicate revision ids": ({"a1_one.py": HEAD + UPGRADE, "a1_two.py": HEAD + UPGRADE}, "defined twice"),
    "a cycle": ({"b1.py": 'revision = "b1"\ndown_revision = "b2"\n' + UPGRADE,
                 "b2.py": 'revision = "b2"\ndown_revision = "b1"\n' + UPGRADE}, "cycle"),
    "a revision that is its own parent": ({"b1.py": 'revision = "b1"\ndown_revision = "b1"\n' + UPGRADE}, "b1"),
    "a branch label used twice": (
        {"b1.py": HEAD.replace("a1", "b1") + 'branch_labels = "x"\n' + UPGRADE,
         "b2.py": HEAD.replace("a1", "b2") + 'branch_labels = "x"\n' + UPGRADE}, "branch label 'x' is declared twice"),
    "unknown depends_on": ({"b1.py": HEAD + 'depends_on = "nope"\n' + UPGRADE}, "depends_on 'nope'"),
}


@pytest.mark.parametrize("files, expected", GRAPHS.values(), ids=GRAPHS.keys())
def test_a_broken_revision_graph_is_refused_in_one_line(project, files, expected):
    for name, source in files.items():
        project.write(name, source)
    project.fails("upgrade", "head", expect=expected)


def test_a_yaml_revision_saved_with_a_byte_order_mark_loads(project):
    project.write("a1_bom.yaml", "\ufeff" + YAML_HEAD + "upgrade:\n  - add_field: {collection: docs, field: m, "
                  "default: 1}\n")
    project.succeeds("upgrade", "head")
    assert project.applied() == {"a0", "a1"}


def test_the_real_cli_reports_a_broken_script_in_one_line(project):
    project.write("a1_bad.yaml", b"revision: a1\ndown_revision: a0\nmessage: caf\xe9\nupgrade: []\n")
    project.fails("upgrade", "head", expect="a1_bad.yaml:3: not UTF-8", via_subprocess=True)
    project.write("a1_bad.yaml", "revision: a1\ndown_revision: a0\nupgrade:\n  - drop_field: [docs]\n")
    project.fails("history", expect="arguments must be a mapping", via_subprocess=True)
