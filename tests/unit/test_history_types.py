"""The registry of history entry types matches what the source writes, and filters parse."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import orchestrator
from orchestrator.history_types import (
    HISTORY_TYPES,
    TEMPLATES,
    UnknownHistoryType,
    parse_types,
)

SOURCE = Path(orchestrator.__file__).parent

# Where an entry's type arrives as a variable rather than a literal: (module, function) ->
# the parameter carrying it, whose literal values the scan then collects from the callers;
# None where the function only builds, reads or copies entries whose type was scanned
# elsewhere.
PASS_THROUGH: dict[tuple[str, str], str | None] = {
    ("outbox.py", "note"): None,  # Outbox.note(type, ...): its callers are scanned
    ("callbacks.py", "_reject"): "kind",  # the callers name the rejection kind
    ("store/rows.py", "history_from_row"): None,  # reads a stored entry
    ("store/sqlite_tx.py", "append_history"): None,  # copies the given entries with their ids
    ("store/memory.py", "append_history"): None,  # copies the given entries with their ids
    ("client.py", "_entry"): None,  # decodes the server's JSON
}


@dataclass
class Written:
    types: set[str] = field(default_factory=set)
    templates: set[str] = field(default_factory=set)
    unexplained: list[str] = field(default_factory=list)


def _functions(tree: ast.AST) -> Iterator[tuple[ast.FunctionDef | ast.AsyncFunctionDef, ast.Call]]:
    """(innermost enclosing function, call) for every call inside a function."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for call in ast.walk(node):
                if isinstance(call, ast.Call):
                    yield node, call


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _argument(call: ast.Call, index: int, name: str) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return call.args[index] if len(call.args) > index else None


def _params(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    return [arg.arg for arg in (*function.args.posonlyargs, *function.args.args)]


def _template(value: ast.JoinedStr) -> str:
    return "".join(
        str(part.value) if isinstance(part, ast.Constant) else "{}" for part in value.values
    )


def _innermost(tree: ast.AST) -> dict[int, ast.FunctionDef | ast.AsyncFunctionDef]:
    """id(call) -> the innermost function holding it."""
    owner: dict[int, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for function, call in _functions(tree):
        current = owner.get(id(call))
        if current is None or current.lineno < function.lineno:
            owner[id(call)] = function
    return owner


def _carried(module: str, tree: ast.Module, function: str, param: str, found: Written) -> None:
    """Collect the literal values callers pass for `param` of module-level `function`."""
    definition = next(
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function
    )
    params = _params(definition)
    index = params.index(param)
    defaults = definition.args.defaults
    offset = len(params) - len(defaults)
    if index >= offset:
        default = defaults[index - offset]
        assert isinstance(default, ast.Constant)
        found.types.add(str(default.value))
    owner = _innermost(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or _callee(node) != function:
            continue
        value = _argument(node, index, param)
        caller = owner[id(node)]
        if value is None:
            continue
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            found.types.add(value.value)
        elif isinstance(value, ast.Name) and value.id in _params(caller):
            _carried(module, tree, caller.name, value.id, found)
        else:
            found.unexplained.append(f"{module}:{node.lineno}: {function}({param}=...)")


def written_types() -> Written:
    """Every history type the source writes, found in calls to HistoryEntry(...) and .note(...)."""
    found = Written()
    for path in sorted(SOURCE.rglob("*.py")):
        module = path.relative_to(SOURCE).as_posix()
        tree = ast.parse(path.read_text(), filename=str(path))
        owner = _innermost(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or _callee(node) not in ("HistoryEntry", "note"):
                continue
            value = _argument(node, 0, "type")
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                found.types.add(value.value)
            elif isinstance(value, ast.JoinedStr):
                found.templates.add(_template(value))
            else:
                function = owner[id(node)].name if id(node) in owner else "<module>"
                if (module, function) not in PASS_THROUGH:
                    found.unexplained.append(f"{module}:{node.lineno}: in {function}")
                    continue
                param = PASS_THROUGH[(module, function)]
                if param is not None:
                    _carried(module, tree, function, param, found)
    return found


def test_every_written_type_is_registered_and_every_registered_type_is_written() -> None:
    """The registry holds exactly the types that the source writes, literal or templated."""
    found = written_types()
    assert found.unexplained == [], "a history type the scan cannot see: add to PASS_THROUGH"
    assert found.templates == set(TEMPLATES), "a new f-string type: add it to TEMPLATES"
    expanded = found.types | {name for names in TEMPLATES.values() for name in names}
    assert sorted(expanded - HISTORY_TYPES) == [], "written but not in HISTORY_TYPES"
    assert sorted(HISTORY_TYPES - expanded) == [], "in HISTORY_TYPES but never written"


def test_the_scan_sees_types_passed_through_parameters() -> None:
    """Rejection kinds handed down through callbacks.py's helpers are found by the scan."""
    found = written_types()
    assert {"callback_rejected", "heartbeat_rejected", "hook_rejected"} <= found.types
    assert {"task_{}", "run_{}"} == found.templates


def test_templates_expand_to_the_finished_states() -> None:
    """task_{state} and run_{state} are written only for finished states."""
    assert TEMPLATES["task_{}"] == [
        "task_cancelled",
        "task_failed",
        "task_succeeded",
        "task_timed_out",
    ]
    assert TEMPLATES["run_{}"] == ["run_cancelled", "run_failed", "run_succeeded"]


@pytest.mark.parametrize(
    ("raw", "types"),
    [
        ("task_failed", ("task_failed",)),
        ("task_failed,run_failed", ("task_failed", "run_failed")),
        (" task_failed , run_failed ,", ("task_failed", "run_failed")),
        ("run_failed,run_failed", ("run_failed",)),
    ],
)
def test_parse_types_takes_a_comma_separated_list(raw: str, types: tuple[str, ...]) -> None:
    """A filter is a comma-separated list; blanks and repeats do not count."""
    assert parse_types(raw) == types


@pytest.mark.parametrize(
    ("raw", "named"),
    [("task_failed,tsak_done", "'tsak_done'"), ("", "empty"), (" , ", "empty")],
)
def test_parse_types_refuses_unknown_or_empty_filters(raw: str, named: str) -> None:
    """An unknown or empty filter is refused, naming the problem and listing the known types."""
    with pytest.raises(UnknownHistoryType) as error:
        parse_types(raw)
    message = str(error.value)
    assert named in message
    assert "run_succeeded" in message
    assert "hook_rejected" in message
