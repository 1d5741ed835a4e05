"""One stage, one name: every rule runs the function of its own name in the module of its own name.

Bug it guards against: a rule whose script calls a function elsewhere (rule ``timing`` running
``rounds.time_in_rounds``, ``host_tables`` running ``decode_graph.write_host_tables``), so the
rule, the module and the function a newcomer looks for carry three different names.
"""

from __future__ import annotations

import ast
import importlib
import re

from conftest import REPO

RULES = REPO / "workflow" / "rules"
SCRIPTS = REPO / "workflow" / "scripts"


def _rule_scripts() -> dict[str, str]:
    """rule name -> the script file its ``script:`` directive names, read from workflow/rules/*.smk."""
    found: dict[str, str] = {}
    for smk in sorted(RULES.glob("*.smk")):
        text = smk.read_text()
        for m in re.finditer(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", text, re.S | re.M):
            script = re.search(r"script:\s*\n\s*\"([^\"]+)\"", m.group(2))
            if script:
                found[m.group(1)] = script.group(1).rsplit("/", 1)[-1]
    return found


def _called_stage(script: str) -> set[tuple[str, str]]:
    """(module, function) of every ``from lmship.<module> import <function>`` the adapter calls."""
    tree = ast.parse((SCRIPTS / script).read_text())
    imported = {
        alias.asname or alias.name: (node.module.split(".", 1)[1], alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lmship.")
        for alias in node.names
    }
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return {imported[name] for name in called if name in imported}


def test_every_rule_runs_the_function_of_its_name_in_the_module_of_its_name():
    rules = _rule_scripts()
    assert len(rules) >= 25, rules
    wrong = {}
    for rule, script in rules.items():
        if script != f"{rule}.py":
            wrong[rule] = f"script {script}"
            continue
        if (rule, rule) not in _called_stage(script):
            wrong[rule] = f"calls {sorted(_called_stage(script))}"
            continue
        module = importlib.import_module(f"lmship.{rule}")
        if not callable(getattr(module, rule, None)):
            wrong[rule] = f"lmship.{rule} has no function {rule}"
    assert not wrong, wrong


def test_the_command_line_names_every_rule():
    """``python -m lmship <rule>`` exists for every rule whose module has a command line."""
    from lmship.__main__ import STAGES

    rules = _rule_scripts()
    for rule in rules:
        module = importlib.import_module(f"lmship.{rule}")
        if hasattr(module, "main"):
            assert rule in STAGES, rule
            assert STAGES[rule].split(":")[0] == rule, (rule, STAGES[rule])


def test_every_command_line_answers_help_and_derived_ones_match_their_function(capsys):
    """Bug: a hand-written parser restates a stage's parameters and drifts from them (an option the
    function lost, a default that differs from the config's). The derived command lines have one
    option per parameter of the stage function, no more, no less."""
    import inspect

    import pytest

    from lmship.__main__ import STAGES

    derived = []
    for name, target in STAGES.items():
        module_name, _, function = target.partition(":")
        module = importlib.import_module(f"lmship.{module_name}")
        main = getattr(module, function or "main")
        with pytest.raises(SystemExit) as done:
            main(["--help"])
        assert done.value.code == 0, name
        shown = capsys.readouterr().out
        stage = getattr(main, "derived_from", None)
        if stage is None:  # a hand-written command line (a child process's, or one with subcommands)
            continue
        derived.append(name)
        options = {o for o in re.findall(r"--([a-z0-9-]+)", shown) if not o.startswith("no-")} - {"help", "log"}
        expected = {p.replace("_", "-") for p in inspect.signature(stage).parameters}
        assert options == expected, (name, options ^ expected)
    assert len(derived) >= 20, derived
