"""Settings declared once (labelloop.settings): the embedder's, the map's and the compute setting are
checked the way the training families are (tests/test_family_conformance.py), and their CLI options
are the declarations themselves: every setting has its flag, its default and its bounds there."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from labelloop.cli.main import build_parser
from labelloop.compute.device import Compute
from labelloop.embed import EmbedderConfig
from labelloop.errors import UserError
from labelloop.maps.config import ProjectionConfig
from labelloop.settings import Settings
from labelloop.train.registry import FAMILIES

DECLARED = [EmbedderConfig, ProjectionConfig, Compute]
# The command whose options are each class's settings (the embedder's device is the compute setting's --device).
COMMAND = {EmbedderConfig: "embed", ProjectionConfig: "project", Compute: "train"}


def out_of_range(info):
    """A value ``info`` must refuse, or None if every value of its type is allowed (free text)."""
    if info.choices is not None:
        bad = "not-one-of-the-choices"
    elif info.maximum is not None:
        bad = info.kind(info.maximum * 2 + 1)
    elif info.minimum is not None:
        bad = info.kind(info.minimum - 1)
    else:
        return None
    return (bad,) * (info.length or 1) if info.is_tuple else bad


@pytest.mark.parametrize("settings_class", DECLARED, ids=lambda c: c.__name__)
def test_defaults_are_valid_and_out_of_range_values_are_refused_by_label(settings_class: type[Settings]):
    settings_class().validate()
    checked = 0
    for info in settings_class.settings():
        bad = out_of_range(info)
        if bad is None:
            continue
        with pytest.raises(UserError) as refused:
            settings_class(**{info.name: bad}).validate()
        message = str(refused.value)
        assert message.startswith(f"Invalid {settings_class.subject} setting: {info.label}"), (info.name, message)
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("settings, expected", [
    (Compute(device="tpu"), "Unknown device 'tpu'"),
    (Compute(ray="not an address"), "is not a Ray address"),
    (Compute(gpus_per_worker=1), "need a Ray cluster"),
    (EmbedderConfig(device="cuda:x"), "Unknown device 'cuda:x'"),
    (ProjectionConfig(pca_dims=1), "PCA dimensions must be 0"),
], ids=str)
def test_rules_a_bound_cannot_say_are_checked_too(settings: Settings, expected: str):
    with pytest.raises(UserError, match=expected):
        settings.validate()


@pytest.mark.parametrize("settings_class", DECLARED, ids=lambda c: c.__name__)
def test_every_setting_is_declared_with_a_label_and_help(settings_class: type[Settings]):
    declared = {info.name for info in settings_class.settings()}
    assert declared == {f.name for f in dataclasses.fields(settings_class)}  # no field outside the declaration
    for info in settings_class.settings():
        assert info.label and info.help.strip().endswith((".", ")")), info.name
        assert info.optional == (info.default is None) or info.optional, info.name


def _options(command: str) -> dict:
    parser = build_parser(command)
    sub = next(a for a in parser._actions if a.dest == "command")
    return {action.dest: action for action in sub.choices[command]._actions}


@pytest.mark.parametrize("settings_class", DECLARED, ids=lambda c: c.__name__)
def test_the_cli_options_are_the_declarations(settings_class: type[Settings]):
    options = _options(COMMAND[settings_class])
    for info in settings_class.settings():
        action = options[info.name]
        assert info.flag in action.option_strings, info.name
        assert action.default is None  # not given: the declared default applies
        assert info.label in action.help and info.shown() in action.help
        if info.choices and not info.is_tuple:
            assert tuple(action.choices) == info.choices


def test_a_value_out_of_range_on_the_command_line_is_refused_by_label(tmp_path):
    run = lambda *args: subprocess.run([sys.executable, "-m", "labelloop", *args, "--workspace", str(tmp_path)], capture_output=True, text=True)  # noqa: E731
    refused = run("project", "nothing", "--neighbors", "500")
    assert refused.returncode != 0 and "Invalid map setting: Neighbours must be 2 to 200, not 500" in refused.stderr + refused.stdout
    refused = run("project", "nothing", "--iterations", "100,100")
    assert "Iterations takes 3 values, not 2" in refused.stderr + refused.stdout
    refused = run("embed", "nothing", "--batch-size", "0")
    assert "Invalid embedder setting: Batch size must be 1 to 1,024, not 0" in refused.stderr + refused.stdout
    refused = run("train", "nothing", "--workers", "2")
    assert "need a Ray cluster" in refused.stderr + refused.stdout


def test_the_families_share_the_same_machinery():
    for family in FAMILIES.values():
        assert issubclass(family.settings_class, Settings)
        assert family.settings_class.settings()[-1].name == "seed"  # a family's own settings first
