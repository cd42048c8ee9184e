"""Settings: the TOML file, environment overrides, and problems that name their source and field."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from orchestrator import invoke
from orchestrator.settings import (
    ConfigError,
    Settings,
    as_written,
    check_handlers,
    client_settings,
    load_settings,
)

REPO = Path(__file__).parents[2]

VALID = """
database_url = "sqlite:///from-file.db"
port = 9000

[workflows.outreach]
description = "two steps"

[workflows.outreach.steps.fetch]
handler = "handlers.outreach:fetch_leads"

[workflows.outreach.steps.research]
handler = "handlers.outreach:research_lead"
needs = ["fetch"]
for_each = "fetch.leads"
timeout = "30s"
quorum = "80%"

[triggers.morning]
workflow = "outreach"
payload = { count = 3 }
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see no ORCHESTRATOR_* variables but the ones they set."""
    for name in list(os.environ):
        if name.upper().startswith("ORCHESTRATOR_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def own_import_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_handlers puts directories on sys.path; each test gets the path back afterwards."""
    monkeypatch.setattr(sys, "path", [*sys.path])
    monkeypatch.setattr(invoke, "_import_roots", [])


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "orchestrator.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert str(error.value) == "\n".join(error.value.problems)
    return error.value.problems


def test_valid_file_loads(tmp_path: Path) -> None:
    """A valid file loads with its values, nested workflow specs and triggers."""
    settings = load_settings(write(tmp_path, VALID))
    assert settings.database_url == "sqlite:///from-file.db"
    assert settings.port == 9000
    assert settings.host == "127.0.0.1"
    research = settings.workflows["outreach"].steps["research"]
    assert research.timeout == 30.0
    assert research.policy().quorum_percent == 80.0
    assert settings.triggers["morning"].payload == {"count": 3}


def test_path_may_be_a_string(tmp_path: Path) -> None:
    """load_settings accepts the path as a string too."""
    assert load_settings(str(write(tmp_path, VALID))).port == 9000


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an argument, ORCHESTRATOR_CONFIG names the file (and is not an unknown setting)."""
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(write(tmp_path, VALID)))
    assert load_settings().port == 9000


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is one problem naming the path and how to point at another."""
    path = tmp_path / "absent.toml"
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: no such config file")
    assert "ORCHESTRATOR_CONFIG" in problem


def test_invalid_toml(tmp_path: Path) -> None:
    """A file that is not TOML is one problem naming the path and the parser's position."""
    path = write(tmp_path, 'port = 9000\nname = "unterminated\n')
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: not valid TOML")
    assert "line 2" in problem


def test_unknown_top_level_field(tmp_path: Path) -> None:
    """A misspelt top-level key is reported as an unknown field with its name."""
    path = write(tmp_path, 'databse_url = "x"\n')
    assert problems_of(path) == [f"{path}: databse_url: unknown field (check the spelling)"]


def test_unknown_nested_field(tmp_path: Path) -> None:
    """A misspelt step key is reported with its dotted path through the workflow."""
    path = write(
        tmp_path,
        '[workflows.w.steps.s]\nhandler = "handlers.outreach:fetch_leads"\nretires = 2\n',
    )
    assert problems_of(path) == [
        f"{path}: workflows.w.steps.s.retires: unknown field (check the spelling)"
    ]


def test_bad_type_names_field_and_expectation(tmp_path: Path) -> None:
    """A value of the wrong type names the file, the dotted field and what was expected."""
    path = write(
        tmp_path,
        '[workflows.w.steps.s]\nhandler = "handlers.outreach:fetch_leads"\nretries = "many"\n',
    )
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: workflows.w.steps.s.retries: ")
    assert "valid integer" in problem


def test_missing_required_field(tmp_path: Path) -> None:
    """A step without its handler is reported as a missing required field."""
    path = write(tmp_path, "[workflows.w.steps.s]\nretries = 1\n")
    assert problems_of(path) == [f"{path}: workflows.w.steps.s.handler: required field is missing"]


def test_bad_duration_in_file(tmp_path: Path) -> None:
    """A bad duration is reported at its field with the expected forms, without pydantic's prefix."""
    path = write(
        tmp_path,
        '[workflows.w.steps.s]\nhandler = "handlers.outreach:fetch_leads"\ntimeout = "soon"\n',
    )
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: workflows.w.steps.s.timeout: expected a duration")
    assert "Value error" not in problem


def test_every_problem_is_listed(tmp_path: Path) -> None:
    """Several problems in one file are all reported, one line each."""
    path = write(
        tmp_path,
        'port = "high"\nlog_level = "loud"\nbogus = 1\n'
        '[workflows.w.steps.s]\nhandler = "handlers.outreach:fetch_leads"\nretries = -1\n',
    )
    fields = {problem.split(": ")[1] for problem in problems_of(path)}
    assert fields == {"port", "log_level", "bogus", "workflows.w.steps.s.retries"}


def test_graph_problem_names_the_workflow(tmp_path: Path) -> None:
    """A workflow-level problem (a cycle) is reported against that workflow."""
    path = write(
        tmp_path,
        '[workflows.w.steps.a]\nhandler = "m:f"\nneeds = ["b"]\n'
        '[workflows.w.steps.b]\nhandler = "m:f"\nneeds = ["a"]\n',
    )
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: workflows.w: the needs graph has a cycle")


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ORCHESTRATOR_DATABASE_URL wins over the file's database_url."""
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", "postgresql://db/orchestrator")
    settings = load_settings(write(tmp_path, VALID))
    assert settings.database_url == "postgresql://db/orchestrator"
    assert settings.port == 9000, "fields not in the environment still come from the file"


def test_environment_sets_what_the_file_omits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An environment variable sets a field the file leaves at its default."""
    monkeypatch.setenv("ORCHESTRATOR_LOG_LEVEL", "debug")
    assert load_settings(write(tmp_path, VALID)).log_level == "debug"


def test_bad_environment_value_is_attributed_to_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad value from the environment is reported against the variable, not the file."""
    monkeypatch.setenv("ORCHESTRATOR_PORT", "eighty")
    [problem] = problems_of(write(tmp_path, VALID))
    assert problem.startswith("environment variable ORCHESTRATOR_PORT: port: ")
    assert "valid integer" in problem


def test_file_problem_stays_with_the_file_when_other_variables_are_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unrelated environment variable does not take the blame for a bad file value."""
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", "sqlite:///env.db")
    path = write(tmp_path, 'port = "eighty"\n')
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: port: ")


def test_trigger_naming_unknown_workflow(tmp_path: Path) -> None:
    """A trigger that names a missing workflow is reported with the file, the trigger and the known workflows."""
    path = write(
        tmp_path,
        '[workflows.real.steps.s]\nhandler = "m:f"\n[triggers.nightly]\nworkflow = "ghost"\n',
    )
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: ")
    assert (
        problem == f"{path}: triggers.nightly.workflow: unknown workflow 'ghost' (workflows: real)"
    )


def test_lowercase_environment_variable_is_named_as_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pydantic-settings reads env names in any case, so attribution ignores case too."""
    monkeypatch.setenv("orchestrator_port", "abc")
    path = write(tmp_path, "")
    [problem] = problems_of(path)
    assert problem.startswith("environment variable ORCHESTRATOR_PORT: port: ")


def test_trigger_with_no_workflows_at_all(tmp_path: Path) -> None:
    """With no workflows declared, the message says there are none."""
    path = write(tmp_path, '[triggers.nightly]\nworkflow = "ghost"\n')
    [problem] = problems_of(path)
    assert "(workflows: none)" in problem


def test_bad_workflow_name(tmp_path: Path) -> None:
    """A workflow name with characters outside letters, digits, _ and - is rejected."""
    path = write(tmp_path, '[workflows."bad name".steps.s]\nhandler = "m:f"\n')
    [problem] = problems_of(path)
    assert "workflow name 'bad name'" in problem


def test_check_handlers_names_the_field(tmp_path: Path) -> None:
    """A handler that does not import is reported at workflows.X.steps.Y.handler with the reason."""
    path = write(
        tmp_path,
        "[workflows.w.steps.good]\n"
        'handler = "handlers.outreach:fetch_leads"\n'
        "[workflows.w.steps.no_attr]\n"
        'handler = "handlers.outreach:no_such_function"\n'
        "[workflows.w.steps.no_module]\n"
        'handler = "no_such_module_for_tests:run"\n',
    )
    settings = load_settings(path)
    with pytest.raises(ConfigError) as error:
        check_handlers(settings, path)
    problems = error.value.problems
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}: workflows.w.steps.no_attr.handler: ")
    assert "no_such_function" in problems[0]
    assert problems[1].startswith(f"{path}: workflows.w.steps.no_module.handler: ")
    assert "no_such_module_for_tests" in problems[1]


def test_check_handlers_accepts_importable_handlers(tmp_path: Path) -> None:
    """check_handlers is silent when every handler imports."""
    path = write(tmp_path, VALID)
    check_handlers(load_settings(path), path)


def test_admin_tokens_split_on_commas() -> None:
    """Several comma-separated admin tokens are accepted for rotation; blanks are dropped."""
    settings = Settings(admin_token=SecretStr(" old-token , new-token ,"))
    assert settings.admin_tokens() == ["old-token", "new-token"]
    assert Settings().admin_tokens() == []


def test_shipped_config_loads_and_its_handlers_import() -> None:
    """config/orchestrator.toml as shipped is valid and every handler it names imports."""
    path = REPO / "config" / "orchestrator.toml"
    settings = load_settings(path)
    assert settings.workflows, "the example declares at least one workflow"
    for trigger in settings.triggers.values():
        assert trigger.workflow in settings.workflows
    check_handlers(settings, path)


def test_run_retention_shorter_than_a_week_is_refused(tmp_path: Path) -> None:
    """Run summaries (and delivery ids) must outlive senders' retries: at least 7 days."""
    path = write(tmp_path, 'retention_history = "1d"\nretention_runs = "3d"\n')
    [problem] = problems_of(path)
    assert "retention_runs: must be at least retention_history and at least 7d" in problem


def test_handlers_import_from_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler module beside the config imports without PYTHONPATH."""
    (tmp_path / "beside_the_config_steps.py").write_text("def run(ctx):\n    return {}\n")
    monkeypatch.chdir(REPO)
    path = write(tmp_path, '[workflows.w.steps.a]\nhandler = "beside_the_config_steps:run"\n')
    check_handlers(load_settings(path), path)
    assert sys.path[0] == str(tmp_path.resolve())
    assert str(REPO.resolve()) in sys.path


def test_a_handler_module_not_found_says_where_handlers_are_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import error names the config file's directory and the working directory."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path = write(tmp_path, '[workflows.w.steps.a]\nhandler = "not_written_yet:run"\n')
    with pytest.raises(ConfigError) as error:
        check_handlers(load_settings(path), path)
    [problem] = error.value.problems
    assert problem.startswith(f"{path}: workflows.w.steps.a.handler: cannot import module")
    assert f"the config file's directory ({tmp_path.resolve()})" in problem
    assert f"the working directory ({work.resolve()})" in problem


def test_an_import_error_inside_the_module_gets_no_search_path_hint(tmp_path: Path) -> None:
    """A module that exists but fails on its own import says that, not where modules are looked for."""
    (tmp_path / "broken_import_steps.py").write_text("import not_installed_anywhere\n")
    path = write(tmp_path, '[workflows.w.steps.a]\nhandler = "broken_import_steps:run"\n')
    with pytest.raises(ConfigError) as error:
        check_handlers(load_settings(path), path)
    [problem] = error.value.problems
    assert "No module named 'not_installed_anywhere'" in problem
    assert "handlers are imported from" not in problem


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (
            '[services.research]\nsecret = "env:UNSET_SERVICE_SECRET"\n',
            "services.research.secret: environment variable UNSET_SERVICE_SECRET is not set",
        ),
        (
            '[services.research]\nsecrets = ["whsec_' + "A" * 24 + '", "env:UNSET_OLD"]\n',
            "services.research.secrets.1: environment variable UNSET_OLD is not set",
        ),
        (
            '[workflows.w.steps.a]\nhandler = "handlers.outreach:fetch_leads"\n'
            '[triggers.push]\nworkflow = "w"\n'
            'webhook = { scheme = "github", secret = "env:UNSET_GITHUB_SECRET" }\n',
            "triggers.push.webhook.secret: environment variable UNSET_GITHUB_SECRET is not set",
        ),
        (
            '[workflows.w.steps.a]\nhandler = "handlers.outreach:fetch_leads"\n'
            '[triggers.push.webhook]\nscheme = "standard"\nsecret = "env:UNSET_STD"\n'
            '[triggers.push]\nworkflow = "w"\n',
            "triggers.push.webhook.secret: environment variable UNSET_STD is not set",
        ),
    ],
    ids=["service-secret", "service-secrets", "github-secret", "standard-secret"],
)
def test_a_missing_environment_secret_is_named_as_written(
    tmp_path: Path, config: str, field: str
) -> None:
    """`secret = "env:X"` is reported at `secret`, `secrets = [...]` at its index."""
    assert problems_of(write(tmp_path, config)) == [f"{tmp_path / 'orchestrator.toml'}: {field}"]


def test_as_written_leaves_other_locations_alone() -> None:
    """Only a `secrets.0` that the file wrote as `secret` is renamed."""
    data = {"services": {"a": {"secret": "x"}, "b": {"secrets": ["x"]}}}
    assert as_written(("services", "a", "secrets", 0), data) == ("services", "a", "secret")
    assert as_written(("services", "b", "secrets", 0), data) == ("services", "b", "secrets", 0)
    assert as_written(("services", "c", "secrets", 0), data) == ("services", "c", "secrets", 0)
    assert as_written(("port",), data) == ("port",)


def test_client_settings_use_the_config_when_it_loads_and_the_environment_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client takes host, port and token from the default config if it loads, else from
    the environment alone; a file named with --config must load."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ORCHESTRATOR_ADMIN_TOKEN", "from-env")
    assert client_settings() == (Settings(), None)
    (tmp_path / "config").mkdir()
    default = tmp_path / "config" / "orchestrator.toml"
    default.write_text("port = 9100\n")
    settings, source = client_settings()
    assert (settings.port, settings.admin_tokens(), source) == (
        9100,
        ["from-env"],
        default.relative_to(tmp_path),
    )
    default.write_text("port = 'not a port'\n")
    assert client_settings() == (Settings(), None), "a broken default is passed over"
    with pytest.raises(ConfigError):
        client_settings(default)
    with pytest.raises(ConfigError):
        client_settings(tmp_path / "missing.toml")
    monkeypatch.setenv("ORCHESTRATOR_PORT", "many")
    with pytest.raises(ConfigError) as error:
        client_settings()
    assert error.value.problems == [
        "environment variable ORCHESTRATOR_PORT: port: Input should be a valid integer, "
        "unable to parse string as an integer"
    ]
