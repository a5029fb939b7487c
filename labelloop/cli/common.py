"""What every command group shares: progress bars, tables on the terminal, the compute and embedder flags."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from contextlib import contextmanager

import pandas as pd

from labelloop.errors import UserError
from labelloop.settings import SettingInfo, Settings


@contextmanager
def progress_bar(description: str, unit: str = "img"):
    """A callback for core's progress(done, total) that draws a tqdm bar on stderr."""
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=description, unit=unit, file=sys.stderr, leave=True)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def print_table(frame: pd.DataFrame) -> None:
    with pd.option_context("display.max_rows", 200, "display.max_columns", 20, "display.width", 160, "display.max_colwidth", 80):
        print(frame.to_string(index=False) if not frame.empty else "(none)")


def add_setting_flag(parser: argparse.ArgumentParser, info: SettingInfo, default: str | None = None) -> None:
    """One declared setting as an option: its flag, its choices, its label and help, and its default
    (``default`` says it where it differs by context, e.g. per training family). The value is None
    unless given, so the settings class's own default applies; :func:`given_settings` reads it."""
    choices = f" ({', '.join(map(str, info.choices))})" if info.choices else ""
    listing = " comma-separated" if info.is_tuple or info.length else ""
    text = f"{info.label}{listing}{choices}. {info.help} Default: {default or info.shown()}".replace("%", "%%")
    single_choice = info.choices is not None and not info.is_tuple
    parser.add_argument(info.flag, *info.aliases, dest=info.name, metavar=None if single_choice else info.name.upper(),
                        type=info.kind if single_choice else None, choices=info.choices if single_choice else None, help=text)


def add_setting_flags(parser: argparse.ArgumentParser, settings_class: type[Settings], *, skip: tuple[str, ...] = ()) -> None:
    """An option per setting of ``settings_class`` (but those in ``skip``)."""
    for info in settings_class.settings():
        if info.name not in skip:
            add_setting_flag(parser, info)


def given_settings(args: argparse.Namespace, infos: list[SettingInfo]) -> dict:
    """The settings among ``infos`` that were given on the command line, parsed (a UserError names a bad one)."""
    given = {}
    for info in infos:
        value = getattr(args, info.name, None)
        if value is not None:
            given[info.name] = info.parse(value) if isinstance(value, str) else value
    return given


def embedder_config(args: argparse.Namespace):
    """The embedder the flags describe (--model, or --embedder/--arch/--pretrained/--weights, and the rest), validated;
    its device is the compute setting's."""
    from labelloop.embed import EmbedderConfig
    from labelloop.embed.models import model_from_flags

    given = given_settings(args, [info for info in EmbedderConfig.settings() if info.name != "device"])
    model = model_from_flags(model=args.model, **{name: given.pop(name, None) for name in ("kind", "arch", "pretrained", "weights")})
    config = EmbedderConfig(**model, **given, device=compute_of(args).device)
    config.validate()
    return config


def add_compute_flags(p: argparse.ArgumentParser, *, ray: str, workers: bool = False) -> None:
    """--device and --ray (and for training, --workers and --gpus-per-worker): where the job runs."""
    from labelloop.compute.device import Compute

    for info in Compute.settings():
        if info.name == "ray":  # what runs on Ray differs by command
            info = dataclasses.replace(info, help=f"{ray[0].upper()}{ray[1:]} on the Ray at this address: {info.help}")
        if workers or info.name not in ("workers", "gpus_per_worker"):
            add_setting_flag(p, info)


def compute_of(args: argparse.Namespace):
    from labelloop.compute.device import Compute

    compute = Compute(**given_settings(args, Compute.settings()))
    compute.validate()
    return compute


def default_embedding_key(workspace, name: str) -> str:
    from labelloop.embed import EmbedderConfig, embedder_key, list_embeddings

    available = [meta["key"] for meta in list_embeddings(workspace, name)]
    default = embedder_key(EmbedderConfig())
    if default in available or not available:
        return default
    if len(available) == 1:
        return available[0]
    raise UserError(f"'{name}' has several embeddings ({', '.join(available)}); choose one with --embedding.")
