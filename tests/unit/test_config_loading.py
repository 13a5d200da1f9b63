"""Loading the configuration: paths follow the file, and environment overrides are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from claude_hooks.config import config_path, load_config
from claude_hooks.config_env import RESERVED
from claude_hooks.errors import ConfigError

TEAM = """
[server]
data_dir = "state"
database_url = "sqlite:///db/main.db"

[types.dev]
runner = "command"
command = ["agents/run.sh", "--prompt", "prompts/hello.txt", "not/here"]
workdir = "none"
prompts_dir = "prompts"
"""


@pytest.fixture
def team_file(tmp_path: Path) -> Path:
    folder = tmp_path / "etc" / "claude-hooks"
    (folder / "prompts").mkdir(parents=True)
    (folder / "prompts" / "hello.txt").write_text("hi")
    path = folder / "claude-hooks.toml"
    path.write_text(TEAM)
    return path


def test_relative_paths_are_relative_to_the_file_not_the_current_directory(
    team_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    folder = team_file.parent
    config = load_config(Path("..") / "etc" / "claude-hooks" / "claude-hooks.toml", environ={})
    assert config.data_dir == folder / "state"
    assert config.database_url == f"sqlite:///{folder / 'db' / 'main.db'}"
    assert config.sqlite_file == folder / "db" / "main.db"
    dev = config.types["dev"]
    assert dev.prompts_dir == folder / "prompts"
    # The program is a path; an argument is made absolute only if it names a file there.
    assert dev.command == [
        str(folder / "agents" / "run.sh"),
        "--prompt",
        str(folder / "prompts" / "hello.txt"),
        "not/here",
    ]
    assert config.source == folder / "claude-hooks.toml"


def test_the_default_data_dir_is_beside_the_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "c.toml"
    path.parent.mkdir()
    path.write_text("")
    config = load_config(path, environ={})
    assert config.data_dir == tmp_path / "conf" / "data"
    assert config.sqlite_file == tmp_path / "conf" / "data" / "claude-hooks.db"


def test_no_file_found_says_where_it_looked_and_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        config_path(None, environ={})
    message = str(caught.value)
    assert str(tmp_path / "claude-hooks.toml") in message
    assert "$CLAUDE_HOOKS_CONFIG" in message
    assert "claude-hooks init" in message
    (tmp_path / "claude-hooks.toml").write_text("")
    assert config_path(None, environ={}) == Path("claude-hooks.toml")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bob", ["bob"]),
        ("bob, alice", ["bob", "alice"]),
        ('["bob", "alice"]', ["bob", "alice"]),
        ("", []),
    ],
)
def test_a_list_from_the_environment_takes_commas_or_json(
    team_file: Path, value: str, expected: list[str]
) -> None:
    config = load_config(team_file, environ={"CLAUDE_HOOKS_SECURITY__ALLOWED_SENDERS": value})
    assert config.security.allowed_senders == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"CLAUDE_HOOKS_SECURITY__ALLOWED_SENDERS": '["bob"'},
            "CLAUDE_HOOKS_SECURITY__ALLOWED_SENDERS: not a valid JSON list",
        ),
        (
            {"CLAUDE_HOOKS_SECURITY__ALLOWED_SENDERS": '{"a": 1}'},
            "CLAUDE_HOOKS_SECURITY__ALLOWED_SENDERS: give a list as names separated by commas",
        ),
        (
            {"CLAUDE_HOOKS_TYPES__DEV__SETTING_SOURCES": "user,bogus"},
            "CLAUDE_HOOKS_TYPES__DEV__SETTING_SOURCES (types.dev.setting_sources.1)",
        ),
        (
            {"CLAUDE_HOOKS_TYPES__DEV__ENV": "A=1"},
            "CLAUDE_HOOKS_TYPES__DEV__ENV: give a table as a JSON object",
        ),
        ({"CLAUDE_HOOKS_SERVER__PROT": "1"}, "CLAUDE_HOOKS_SERVER__PROT: server has no key 'prot'"),
        (
            {"CLAUDE_HOOKS_SERVER__PORT": "eighty"},
            "CLAUDE_HOOKS_SERVER__PORT (server.port): Input should be a valid integer",
        ),
    ],
)
def test_a_bad_environment_value_is_one_line_naming_the_variable(
    team_file: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(team_file, environ=environ)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_misspelt_type_in_the_environment_creates_no_type(team_file: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(team_file, environ={"CLAUDE_HOOKS_TYPES__DEVV__TOKEN": "x"})
    assert str(caught.value) == (
        "CLAUDE_HOOKS_TYPES__DEVV__TOKEN: there is no type 'devv' in the configuration "
        "(types: dev); correct the name, or define [types.devv] with its runner"
    )
    # Setting a type's runner defines it; its other keys and the known types' keys apply.
    config = load_config(
        team_file,
        environ={
            "CLAUDE_HOOKS_TYPES__OPS__RUNNER": "merge",
            "CLAUDE_HOOKS_TYPES__DEV__TOKEN": "tok",
            "CLAUDE_HOOKS_TYPES__DEV__ENV__ANTHROPIC_API_KEY": "key",
            "CLAUDE_HOOKS_TASK_ID": "not a setting",
        },
    )
    assert sorted(config.types) == ["dev", "ops"]
    assert config.types["dev"].token is not None
    assert config.types["dev"].token.get_secret_value() == "tok"
    assert config.types["dev"].env == {"ANTHROPIC_API_KEY": "key"}


@pytest.mark.parametrize(
    ("variable", "closest"),
    [
        ("CLAUDE_HOOKS_TYPE__DEV__TOKEN", "CLAUDE_HOOKS_TYPES__DEV__TOKEN"),
        ("CLAUDE_HOOKS_SERVR__PORT", "CLAUDE_HOOKS_SERVER__PORT"),
        ("CLAUDE_HOOKS_SERVER_PORT", "CLAUDE_HOOKS_SERVER__PORT"),
        ("CLAUDE_HOOKS_FORGEJO_URL", "CLAUDE_HOOKS_FORGEJO__URL"),
        ("CLAUDE_HOOKS_SERVER__PROT", "CLAUDE_HOOKS_SERVER__PORT"),
    ],
)
def test_a_misspelt_variable_is_an_error_naming_the_closest_setting(
    team_file: Path, variable: str, closest: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(team_file, environ={variable: "8080"})
    message = str(caught.value)
    assert message.startswith(f"{variable}: ")
    assert f"did you mean {closest}?" in message
    assert "\n" not in message


def test_the_names_the_project_reserves_are_not_settings(team_file: Path) -> None:
    """What agents are given (so a `claude-hooks` command an agent runs still loads), the
    config file's variable and the tests' and benchmarks' servers; the README lists them."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name in sorted(RESERVED):
        assert f"`{name}`" in readme, name
    config = load_config(team_file, environ=dict.fromkeys(RESERVED, "x"))
    assert sorted(config.types) == ["dev"]


def test_a_bare_argument_naming_a_file_beside_the_config_is_that_file(tmp_path: Path) -> None:
    (tmp_path / "sleep_agent.py").write_text("print('hi')\n")
    (tmp_path / "data").mkdir()
    path = tmp_path / "claude-hooks.toml"
    path.write_text(
        '[types.dev]\nrunner = "command"\nworkdir = "none"\n'
        'command = ["python3", "sleep_agent.py", "data", "-u", "missing.py"]\n'
    )
    config = load_config(path, environ={})
    # The program stays a name looked up on PATH; a folder or a missing file is left as written.
    assert config.types["dev"].command == [
        "python3",
        str(tmp_path / "sleep_agent.py"),
        "data",
        "-u",
        "missing.py",
    ]
