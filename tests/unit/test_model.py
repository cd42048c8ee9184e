"""Workflow and step specs: graph checks, fan-out sources, quorum, durations, rates, join policy."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator.durations import parse_duration
from orchestrator.model import (
    JoinPolicy,
    Rate,
    StepSpec,
    TriggerSpec,
    WorkflowSpec,
    find_cycle,
    stages_of,
)

H = "handlers.outreach:fetch_leads"


def workflow(**steps: dict[str, Any]) -> WorkflowSpec:
    """A workflow whose steps all use one handler; keyword = step name, value = extra fields."""
    return WorkflowSpec.model_validate(
        {"steps": {name: {"handler": H, **fields} for name, fields in steps.items()}}
    )


def error_text(error: pytest.ExceptionInfo[ValidationError]) -> str:
    return "\n".join(str(problem["msg"]) for problem in error.value.errors())


# --- the needs graph ----------------------------------------------------------------------------


def test_valid_workflow_has_roots_and_dependents() -> None:
    """A valid DAG loads, and reports its roots and each step's dependents."""
    spec = workflow(
        fetch={}, research={"needs": ["fetch"]}, summary={"needs": ["fetch", "research"]}
    )
    assert spec.roots() == ["fetch"]
    assert spec.dependents("fetch") == ["research", "summary"]
    assert spec.dependents("summary") == []


def test_unknown_need_is_rejected() -> None:
    """A step that needs a step the workflow lacks is rejected, naming both and the known steps."""
    with pytest.raises(ValidationError) as error:
        workflow(fetch={}, draft={"needs": ["research"]})
    text = error_text(error)
    assert "'draft' needs unknown step 'research'" in text
    assert "draft, fetch" in text


def test_workflow_needs_a_step() -> None:
    """A workflow with no steps is rejected."""
    with pytest.raises(ValidationError):
        WorkflowSpec.model_validate({"steps": {}})


def test_step_name_pattern() -> None:
    """Step names must be identifiers (letters, digits, _ or -), since they appear in paths."""
    with pytest.raises(ValidationError):
        workflow(**{"bad name": {}})


def cycle_in(message: str) -> list[str]:
    _, _, tail = message.partition("cycle: ")
    return tail.split(" -> ")


@pytest.mark.parametrize(
    ("steps", "members"),
    [
        ({"a": ["a"]}, {"a"}),
        ({"a": ["b"], "b": ["a"]}, {"a", "b"}),
        ({"a": ["b"], "b": ["c"], "c": ["a"]}, {"a", "b", "c"}),
        ({"root": [], "x": ["root", "z"], "y": ["x"], "z": ["y"], "tail": ["x"]}, {"x", "y", "z"}),
    ],
)
def test_cycle_is_rejected_and_named(steps: dict[str, list[str]], members: set[str]) -> None:
    """A cycle in needs is rejected with a message that walks the cycle and nothing else."""
    with pytest.raises(ValidationError) as error:
        workflow(**{name: {"needs": needs} for name, needs in steps.items()})
    path = cycle_in(error_text(error))
    assert path[0] == path[-1]
    assert set(path) == members
    for node, need in itertools.pairwise(path):
        assert need in steps[node]


# --- for_each -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "steps",
    [
        {"fan": {"for_each": "event.leads"}},
        {"fetch": {}, "fan": {"needs": ["fetch"], "for_each": "fetch.leads"}},
        {"fetch": {}, "fan": {"needs": ["fetch"], "for_each": "fetch"}},
    ],
)
def test_for_each_from_event_or_needed_step(steps: dict[str, dict[str, Any]]) -> None:
    """for_each may read the event or a step the fanning step needs."""
    assert workflow(**steps).steps["fan"].for_each is not None


@pytest.mark.parametrize(
    "steps",
    [
        {"fetch": {}, "fan": {"for_each": "fetch.leads"}},
        {"fan": {"for_each": "payload.leads"}},
        {"fetch": {}, "other": {}, "fan": {"needs": ["other"], "for_each": "fetch.leads"}},
    ],
)
def test_for_each_from_elsewhere_is_rejected(steps: dict[str, dict[str, Any]]) -> None:
    """for_each from anything but event. or a needed step is rejected, naming the step."""
    with pytest.raises(ValidationError) as error:
        workflow(**steps)
    assert "step 'fan': for_each" in error_text(error)


@pytest.mark.parametrize(
    ("for_each", "source"),
    [
        (None, None),
        ("event.leads", ("event", ("leads",))),
        ("fetch.data.leads", ("fetch", ("data", "leads"))),
        ("fetch", ("fetch", ())),
    ],
)
def test_for_each_source(for_each: str | None, source: tuple[str, tuple[str, ...]] | None) -> None:
    """for_each splits into the source (event or a step) and the key path under it."""
    assert StepSpec(handler=H, for_each=for_each).for_each_source() == source


# --- quorum and join policy ---------------------------------------------------------------------


def test_quorum_with_join_any_is_rejected() -> None:
    """join = 'any' and quorum contradict each other and are rejected."""
    with pytest.raises(ValidationError, match="either join = 'any' or quorum"):
        StepSpec(handler=H, join="any", quorum=2)


@pytest.mark.parametrize("quorum", ["0%", "-5%", "100.5%", "250%"])
def test_quorum_percent_out_of_bounds(quorum: object) -> None:
    """A quorum percentage must be above 0% and at most 100%."""
    with pytest.raises(ValidationError, match="above 0% and at most 100%"):
        StepSpec.model_validate({"handler": H, "quorum": quorum})


@pytest.mark.parametrize(("quorum", "percent"), [("0.5%", 0.5), ("80%", 80.0), (" 100% ", 100.0)])
def test_quorum_percent_in_bounds(quorum: str, percent: float) -> None:
    """A percentage quorum becomes a quorum-mode policy with that percentage."""
    policy = StepSpec.model_validate({"handler": H, "quorum": quorum}).policy()
    assert (policy.mode, policy.quorum_percent, policy.quorum_count) == ("quorum", percent, None)


@pytest.mark.parametrize("quorum", [0, -3])
def test_quorum_count_must_be_positive(quorum: int) -> None:
    """A quorum count must be at least 1."""
    with pytest.raises(ValidationError, match="at least 1"):
        StepSpec(handler=H, quorum=quorum)


def test_bad_quorum_text_is_explained() -> None:
    """A quorum that is neither a count nor a percentage says what was expected."""
    with pytest.raises(ValidationError, match="percentage such as '80%'"):
        StepSpec.model_validate({"handler": H, "quorum": "most%"})


def test_step_policy_carries_the_step_settings() -> None:
    """A step's policy takes its join mode, quorum count, on_failure and on_deadline."""
    assert StepSpec(handler=H, join="any", on_failure="collect").policy() == JoinPolicy(
        mode="any", on_failure="collect"
    )
    assert StepSpec(handler=H, quorum=3, on_deadline="proceed").policy() == JoinPolicy(
        mode="quorum", quorum_count=3, on_deadline="proceed"
    )


@pytest.mark.parametrize(
    ("policy", "expected", "required"),
    [
        (JoinPolicy(mode="all"), 5, 5),
        (JoinPolicy(mode="all"), 0, 0),
        (JoinPolicy(mode="any"), 5, 1),
        (JoinPolicy(mode="any"), 0, 0),
        (JoinPolicy(mode="quorum", quorum_count=3), 5, 3),
        (JoinPolicy(mode="quorum", quorum_count=8), 5, 5),
        (JoinPolicy(mode="quorum", quorum_percent=80.0), 10, 8),
        (JoinPolicy(mode="quorum", quorum_percent=50.0), 5, 3),
        (JoinPolicy(mode="quorum", quorum_percent=1.0), 7, 1),
        (JoinPolicy(mode="quorum", quorum_percent=100.0), 7, 7),
        (JoinPolicy(mode="quorum", quorum_percent=33.3), 3, 1),
    ],
)
def test_join_policy_required(policy: JoinPolicy, expected: int, required: int) -> None:
    """required() is all, one, k or the rounded-up share, never more than expected."""
    assert policy.required(expected) == required


@settings(max_examples=200, deadline=None)
@given(expected=st.integers(0, 100_000), percent=st.integers(1, 100))
def test_whole_percent_quorum_rounds_up_exactly(expected: int, percent: int) -> None:
    """A whole-percent quorum needs the exact ceiling of the share, never more than expected."""
    policy = JoinPolicy(mode="quorum", quorum_percent=float(percent))
    exact = math.ceil(Fraction(expected * percent, 100))
    assert policy.required(expected) == min(exact, expected)


# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("2d", 172_800.0),
        ("1m30s500ms", 90.5),
        ("1.5h", 5400.0),
        (" 10m ", 600.0),
        ("45", 45.0),
        (12, 12.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    """Durations are seconds, written as a number or with units ms, s, m, h and d."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "   ", "soon", "10x", "1h 30m", "s", "30s!", "m30"])
def test_bad_duration_text(text: str) -> None:
    """A string that is not a duration raises ValueError saying what was expected."""
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [True, None, [30], {"s": 30}])
def test_non_duration_types(value: object) -> None:
    """Booleans, None and containers are not durations."""
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [-1, -0.5, "-30", "nan", float("nan"), "inf", float("inf")])
def test_negative_or_non_finite_duration(value: object) -> None:
    """A negative, NaN or infinite duration is rejected."""
    with pytest.raises(ValueError, match="finite number of seconds, zero or more"):
        parse_duration(value)


@pytest.mark.parametrize("quorum", [8.0, 0.5])
def test_bare_float_quorum_is_refused(quorum: float) -> None:
    """A float quorum is ambiguous (count or percent?) and is refused with both spellings shown."""
    with pytest.raises(ValidationError, match="whole count such as 8 or a percentage string"):
        StepSpec.model_validate({"handler": H, "quorum": quorum})


@pytest.mark.parametrize(
    ("percent", "expected", "required"), [(64.4, 250, 161), (8.8, 375, 33), (19.17, 10_000, 1917)]
)
def test_decimal_percent_quorum_is_exact(percent: float, expected: int, required: int) -> None:
    """A decimal percentage needs exactly the ceiling of its decimal share, free of float error."""
    assert JoinPolicy(mode="quorum", quorum_percent=percent).required(expected) == required


def test_step_durations_parse() -> None:
    """Step timeout, backoff and deadline fields take duration text."""
    step = StepSpec.model_validate(
        {"handler": H, "timeout": "30s", "backoff": "250ms", "backoff_max": "1h30m", "deadline": 12}
    )
    assert (step.timeout, step.backoff, step.backoff_max, step.deadline) == (
        30.0,
        0.25,
        5400.0,
        12.0,
    )


def test_step_bad_duration_names_the_field() -> None:
    """A bad duration in a step is reported against its field."""
    with pytest.raises(ValidationError) as error:
        StepSpec.model_validate({"handler": H, "timeout": "soon"})
    assert error.value.errors()[0]["loc"] == ("timeout",)


# --- rates --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "per"),
    [
        ("5/s", 5, 1.0),
        ("10/30s", 10, 30.0),
        ("100/m", 100, 60.0),
        ("3/h", 3, 3600.0),
        ("2/500ms", 2, 0.5),
        (" 7 / 2m ", 7, 120.0),
        ("4/1.5", 4, 1.5),
    ],
)
def test_rate_parsing(text: str, count: int, per: float) -> None:
    """A rate 'count/window' becomes count starts per window seconds."""
    step = StepSpec.model_validate({"handler": H, "rate": text})
    assert step.rate == Rate(count=count, per=per)


def test_rate_as_table() -> None:
    """A rate may also be written as a table of count and per."""
    step = StepSpec.model_validate({"handler": H, "rate": {"count": 2, "per": 3}})
    assert step.rate == Rate(count=2, per=3.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fast", "expected a rate such as '5/s'"),
        ("5", "expected a rate such as '5/s'"),
        ("/s", "expected a rate such as '5/s'"),
        ("-5/s", "expected a rate such as '5/s'"),
        ("5/x", "expected a duration"),
        ("0/s", "greater than or equal to 1"),
        ("5/0s", "greater than 0"),
    ],
)
def test_bad_rate(text: str, message: str) -> None:
    """A malformed or empty rate is rejected with what was expected."""
    with pytest.raises(ValidationError, match=message):
        StepSpec.model_validate({"handler": H, "rate": text})


# --- other step fields --------------------------------------------------------------------------


@pytest.mark.parametrize("handler", ["no_colon", "mod:", ":func", "mod:1func", "a b:c"])
def test_handler_must_be_an_import_path(handler: str) -> None:
    """A handler must be written module:callable."""
    with pytest.raises(ValidationError):
        StepSpec(handler=handler)


def test_unknown_step_key_is_rejected() -> None:
    """A misspelt key is an error, not silently ignored."""
    with pytest.raises(ValidationError) as error:
        StepSpec.model_validate({"handler": H, "retires": 2})
    assert error.value.errors()[0]["type"] == "extra_forbidden"


def test_max_attempts_counts_the_first_try() -> None:
    """retries = n allows n + 1 attempts."""
    assert StepSpec(handler=H).max_attempts == 1
    assert StepSpec(handler=H, retries=2).max_attempts == 3


@pytest.mark.parametrize("retries", [-1, 101])
def test_retries_bounds(retries: int) -> None:
    """retries lies between 0 and 100."""
    with pytest.raises(ValidationError):
        StepSpec(handler=H, retries=retries)


def test_specs_are_frozen() -> None:
    """Specs cannot be changed after validation."""
    step = StepSpec(handler=H)
    with pytest.raises(ValidationError):
        step.retries = 3


def test_trigger_payload_defaults_empty() -> None:
    """A trigger names a workflow and defaults to an empty payload."""
    assert TriggerSpec(workflow="w").payload == {}


# --- find_cycle ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "graph",
    [
        {},
        {"a": ()},
        {"a": ("b", "c"), "b": ("d",), "c": ("d",), "d": ()},
        {"a": ("missing",)},
    ],
)
def test_find_cycle_on_a_dag(graph: dict[str, tuple[str, ...]]) -> None:
    """A graph without cycles, including a diamond, gives no cycle."""
    assert find_cycle(graph) == []


def test_find_cycle_self_loop() -> None:
    """A node that needs itself is a cycle of one."""
    assert find_cycle({"a": ("a",)}) == ["a", "a"]


def is_acyclic(graph: dict[str, tuple[str, ...]]) -> bool:
    """Kahn's algorithm: a graph is acyclic when every node can be removed leaves first."""
    remaining = {node: {n for n in needs if n in graph} for node, needs in graph.items()}
    while remaining:
        free = [node for node, needs in remaining.items() if not needs]
        if not free:
            return False
        for node in free:
            del remaining[node]
        for needs in remaining.values():
            needs.difference_update(free)
    return True


GRAPHS = st.dictionaries(
    st.sampled_from("abcdefg"),
    st.lists(st.sampled_from("abcdefgh"), max_size=3, unique=True).map(tuple),
    max_size=7,
)


@settings(max_examples=200, deadline=None)
@given(graph=GRAPHS)
def test_find_cycle_property(graph: dict[str, tuple[str, ...]]) -> None:
    """find_cycle finds a cycle exactly when one exists, and returns a real closed path."""
    cycle = find_cycle(graph)
    assert (cycle == []) == is_acyclic(graph)
    if cycle:
        assert cycle[0] == cycle[-1]
        assert len(set(cycle[:-1])) == len(cycle) - 1
        for node, need in itertools.pairwise(cycle):
            assert need in graph[node]


# --- stages: what runs side by side ----------------------------------------------------------


def test_stages_of_the_demo_shape() -> None:
    """Independent steps share a stage; each step sits one past the latest of its needs."""
    spec = workflow(
        fetch_leads={},
        research={"needs": ["fetch_leads"]},
        triage={},
        pick_top={"needs": ["research"]},
        draft={"needs": ["pick_top"]},
        summary={"needs": ["draft", "triage"]},
    )
    assert spec.stages() == [
        ["fetch_leads", "triage"],
        ["research"],
        ["pick_top"],
        ["draft"],
        ["summary"],
    ]


def test_stages_put_parallel_branches_side_by_side() -> None:
    """Steps that need only the same step run together, not as the chain of declaration order."""
    spec = workflow(
        load={}, score={"needs": ["load"]}, review={"needs": ["load"]},
        combine={"needs": ["score", "review"]},
    )  # fmt: skip
    assert spec.stages() == [["load"], ["score", "review"], ["combine"]]


@pytest.mark.parametrize("graph", [{"a": ("a",)}, {"a": ("b",), "b": ("a",)}, {"a": ("nope",)}])
def test_stages_of_refuses_a_graph_without_an_order(graph: dict[str, tuple[str, ...]]) -> None:
    """A cycle or an unknown need has no stage order, and says so instead of looping."""
    with pytest.raises(ValueError, match="no stage order"):
        stages_of(graph)


@settings(max_examples=200, deadline=None)
@given(graph=GRAPHS)
def test_stages_property(graph: dict[str, tuple[str, ...]]) -> None:
    """Every step appears once, after all its needs, and right after the latest of them."""
    closed = {node: tuple(n for n in needs if n in graph) for node, needs in graph.items()}
    assume(is_acyclic(closed))
    grouped = stages_of(closed)
    stage_of = {node: index for index, stage in enumerate(grouped) for node in stage}
    assert sorted(stage_of) == sorted(closed)
    assert sum(map(len, grouped)) == len(closed)
    for node, needs in closed.items():
        assert stage_of[node] == 1 + max((stage_of[need] for need in needs), default=-1)
    for stage in grouped:
        assert stage == sorted(stage, key=list(closed).index)
