"""README.md and docs/ stay true: every config key is documented by its dotted name, every
training and sweep command they show parses and names real keys, the files they name exist,
and CI runs the README's test command."""

from __future__ import annotations

import dataclasses
import re
import shlex
import typing
from pathlib import Path

import pytest

from vla.config import Config, load_config
from vla.tune.space import SweepSettings, load_sweep
from vla.typed_config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = {"README.md": README, **{f"docs/{p.name}": p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}}
REFERENCE = PAGES["docs/configuration.md"]
# What pipelines/train.py and pipelines/tune.py read when no --config is given
DEFAULT_CONFIG = "configs/demo.yaml"


def dotted_keys(config: type, prefix: str) -> list[str]:
    """Every key of the dataclass ``config`` as ``prefix.key``, nested dataclasses recursed into."""
    hints = typing.get_type_hints(config)
    keys = []
    for field in dataclasses.fields(config):
        key = f"{prefix}.{field.name}"
        keys.append(key)
        if dataclasses.is_dataclass(hints[field.name]):
            keys += dotted_keys(hints[field.name], key)
    return keys


def config_sections() -> list[tuple[str, type]]:
    """The sections of a run's config (model, data, train, run) and the sweep settings."""
    hints = typing.get_type_hints(Config)
    sections = [(f.name, hints[f.name]) for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])]
    return [*sections, ("sweep", SweepSettings)]


@pytest.mark.parametrize(("section", "config"), config_sections(), ids=[name for name, _ in config_sections()])
def test_every_config_key_is_in_the_configuration_reference(section, config):
    keys = dotted_keys(config, section)
    assert keys
    missing = [key for key in keys if f"`{key}`" not in REFERENCE]
    assert not missing, f"docs/configuration.md does not document {missing}"


SCRIPTS = {"pipelines/train.py": "train", "vla-train": "train", "pipelines/tune.py": "tune", "vla-tune": "tune"}
# Placeholders a documented command may hold: "<...>" and NAME are values to fill in, and a
# synopsis marks its optional parts with brackets ("[--config configs/NAME.yaml]", "[key=value ...]").
# These tokens are skipped; every other token must parse.
PLACEHOLDER = re.compile(r"<|NAME|^\[|^\.\.\.\]?$")


def documented_commands() -> list[tuple[str, str, str, list[str]]]:
    """(page, command line, train or tune, the tokens after the script) of every command in a
    fenced code block of README.md and docs/*.md that runs one of SCRIPTS."""
    commands = []
    for page, text in PAGES.items():
        for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = re.sub(r"(^|\s)#.*$", "", line).strip()  # a shell comment
                if not any(script in line for script in SCRIPTS):
                    continue
                tokens = shlex.split(line)
                for index, token in enumerate(tokens):
                    if token in SCRIPTS:
                        commands.append((page, line, SCRIPTS[token], tokens[index + 1:]))
                        break
    return commands


def parse_command(kind: str, tokens: list[str]) -> tuple[str, str | None, list[str]]:
    """(config file, space file, overrides) of a train or tune command's arguments."""
    flags = {"--config", "--space", "--name"} if kind == "tune" else {"--config"}
    config, space, overrides = DEFAULT_CONFIG, None, []
    tokens = iter(tokens)
    for token in tokens:
        if PLACEHOLDER.search(token) or token == "--dry-run":
            continue
        if token in flags:
            value = next(tokens, None)
            assert value is not None, f"{token} without a value"
            if token == "--config" and not PLACEHOLDER.search(value):
                config = value
            elif token == "--space":
                space = value
        elif token.startswith("-"):
            raise AssertionError(f"{kind} has no option {token}")
        elif "=" in token:
            overrides.append(token)
        else:
            raise AssertionError(f"{token!r} is neither an option nor a key=value override")
    return config, space, overrides


COMMANDS = documented_commands()


def test_the_pages_show_training_and_sweep_commands():
    kinds = {kind for _, _, kind, _ in COMMANDS}
    assert kinds == {"train", "tune"}, f"found commands of {kinds}"


@pytest.mark.parametrize(("page", "line", "kind", "tokens"), COMMANDS,
                         ids=[f"{page}:{line[:60]}" for page, line, _, _ in COMMANDS])
def test_documented_command_parses_and_names_real_keys(page, line, kind, tokens):
    try:
        config, space, overrides = parse_command(kind, tokens)
    except AssertionError as err:
        pytest.fail(f"{page}: {line}\n{err}")
    assert (ROOT / config).is_file(), f"{page}: {line}\n--config {config} does not exist"
    try:
        if kind == "train":
            load_config(ROOT / config, overrides)
        else:
            assert space is not None, f"{page}: {line}\na sweep needs --space"
            assert (ROOT / space).is_file(), f"{page}: {line}\n--space {space} does not exist"
            load_sweep(ROOT / space, ROOT / config, overrides)
    except ConfigError as err:
        pytest.fail(f"{page}: {line}\n{err}")


def test_files_the_pages_name_exist():
    pattern = r"(?<![\w.-])(?:pipelines|configs|tune_spaces|benchmarks|docs|tests|vla|k8s)/[\w./-]+\.(?:py|yaml|md|sh)"
    named = {(page, path) for page, text in PAGES.items() for path in re.findall(pattern, text)}
    assert {page for page, _ in named} >= {"README.md"}, "the README names no files"
    missing = sorted(f"{page}: {path}" for page, path in named if "NAME" not in path and not (ROOT / path).is_file())
    assert not missing, f"files named that do not exist: {missing}"


def test_quick_start_and_ci_run_the_same_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    test_script = (ROOT / "scripts" / "test.sh").read_text().strip().splitlines()
    assert "bash scripts/test.sh" in README and "bash scripts/demo.sh" in README
    assert ci[-1] == "bash scripts/test.sh"
    assert test_script[-1] == 'python -m pytest tests "$@"'
    assert "python -m pytest tests" in README
