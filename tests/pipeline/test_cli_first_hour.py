"""A newcomer's first commands stay light, and what they print is whole.

`reflexarc --help` and `validate` of a config without an SNN node must not wait for torch,
Ray or a whole operator library to import: checked in a fresh interpreter, by which
modules got imported (never by wall-clock time).
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imported_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nimport json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_of_the_cli_does_not_import_torch_or_ray():
    mods = _imported_after("import pipeline.cli")
    assert "torch" not in mods and "ray" not in mods and "numba" not in mods


def test_help_imports_no_plugin_command_module():
    code = ("import contextlib, io\nfrom pipeline.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "assert 'brainsim' in out.getvalue() and 'train' in out.getvalue(), out.getvalue()")
    mods = _imported_after(code)
    assert not {"torch", "ray", "numba"} & mods
    assert not {"operators.snn.train", "cluster.brainsim.cli", "cluster.fleet.cli"} & mods


def test_validate_of_a_builtin_only_config_imports_no_operator_family():
    code = f"from pipeline.cli import main\nassert main(['validate', {str(ROOT / 'configs' / 'demo.yaml')!r}]) == 0"
    mods = _imported_after(code)
    assert not {"torch", "ray", "numba", "pyarrow.compute"} & mods
    assert not any(m.startswith(("operators.", "cluster.")) for m in mods)


def test_validate_of_an_events_config_imports_only_the_events_family():
    code = f"from pipeline.cli import main\nassert main(['validate', {str(ROOT / 'configs' / 'events_preprocess.yaml')!r}]) == 0"
    mods = _imported_after(code)
    assert "operators.events" in mods
    assert not {"torch", "ray", "operators.snn", "operators.eeg", "operators.calcium"} & mods


def test_a_plugin_command_still_runs_when_named(capsys):
    from pipeline.cli import main

    try:
        main(["evolve", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    assert "--generations" in capsys.readouterr().out


def test_operator_index_names_every_operator_and_the_module_that_registers_it():
    from pipeline.operator import INDEX_GROUP, registry

    index = {ep.name: ep.value for ep in entry_points(group=INDEX_GROUP)}
    # the runtime's own operators are imported first anyway; pipeline.testing's list sources
    # and sinks are registered by tests that import it, not by configs
    own = ("pipeline.builtins", "pipeline.testing")
    # only what the project's packages register: test modules register operators of their own
    packages = ("pipeline.", "operators.", "edge.", "cluster.")
    registered = {name: cls.__module__ for name, cls in registry().items()
                  if cls.__module__ not in own and cls.__module__.startswith(packages)}
    assert index == registered


def test_tables_are_full_width_when_piped():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "ops"], capture_output=True, text=True,
                         cwd=ROOT, check=True, env={"PATH": "/usr/bin:/bin"}).stdout
    assert "…" not in out  # rich cut cells to fit 80 columns before
    assert max(len(line) for line in out.splitlines()) > 120


def test_ray_log_lines_are_hidden_unless_verbose():
    # ray.init sets its logger to ray_constants.LOGGER_LEVEL, read from RAY_LOGGER_LEVEL when
    # Ray is first imported: the CLI sets it before any command imports Ray
    code = (f"import os\nos.environ.pop('RAY_LOGGER_LEVEL', None)\nfrom pipeline.cli import main\n"
            f"main(ARGS + ['validate', {str(ROOT / 'configs' / 'demo.yaml')!r}])\n"
            "from ray._private import ray_constants\nprint('LEVEL', ray_constants.LOGGER_LEVEL)")
    for args, level in (([], "error"), (["--verbose"], "info")):
        out = subprocess.run([sys.executable, "-c", code.replace("ARGS", repr(args))], capture_output=True,
                             text=True, cwd=ROOT, check=True).stdout
        assert f"LEVEL {level}" in out, out
