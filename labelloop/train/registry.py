"""Every training family, by name: the one list the CLI, the Train page and prediction are built from;
and what a finished run's record means in a family's terms (its settings, its recipe).

Adding a family: write its module (a ``FamilySettings`` subclass and a
``Family`` subclass, see ``labelloop.train.family``) and add it to ``FAMILIES``.
"""

from __future__ import annotations

import hashlib
import json

from labelloop.data.runs import RunInfo, load_json
from labelloop.errors import UserError
from labelloop.train import frozen, heads, resnet, triplet
from labelloop.train.family import Family
from labelloop.train.settings import FamilySettings

FAMILIES: dict[str, Family] = {family.name: family for family in (heads.FAMILY, frozen.FAMILY, resnet.FAMILY, triplet.FAMILY)}


def get_family(name: str) -> Family:
    """The family called ``name``, or a UserError listing the ones there are."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UserError(f"Model family '{name}' is not one of {', '.join(FAMILIES)}.") from None


def default_settings(family: str, **overrides) -> FamilySettings:
    """A family's recipe, with ``overrides`` applied (a setting the family does not read is refused)."""
    settings_class = get_family(family).settings_class
    known = {info.name for info in settings_class.settings()}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"{family} does not read {', '.join(unknown)}; its settings are {', '.join(sorted(known))}.")
    return settings_class(**overrides)


def settings_from_dict(data: dict) -> FamilySettings:
    """The settings a run's config.json records (any format this app has written)."""
    return get_family(data.get("family") or "heads").settings_class.from_dict(data)


def family_of_model(model_type: str) -> Family:
    """The family whose runs save models of ``model_type``; a UserError for a type no family writes."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise UserError(f"This model is of an unknown type '{model_type}': it was not written by this app, or by a newer version of it.")


def run_settings(run: RunInfo) -> FamilySettings:
    """The settings ``run`` trained with (its config.json), as its family's settings class."""
    config = load_json(run, "config.json") if (run.path / "config.json").exists() else {"family": run.summary.kind}
    return settings_from_dict(config)


def recipe_identity(settings: FamilySettings) -> str:
    """A short digest of a family's complete settings: equal settings, equal identity (whatever format
    the run's config.json was written in)."""
    return hashlib.blake2b(json.dumps(settings.to_dict(), sort_keys=True, default=str).encode(), digest_size=6).hexdigest()


HEAD_NAMES = {"knn": "k-NN", "logreg": "logistic regression", "mlp": "MLP", "softmax": "softmax"}


def run_recipe(run: RunInfo) -> tuple[str, str]:
    """(identity, readable name) of the settings ``run`` trained with.

    Two runs share an identity only if every setting their family read
    (heads, embedding, seed, folds, ...) is the same: the condition for
    comparing their numbers across versions.
    """
    settings = run_settings(run)
    if settings.family == "heads":
        name = "heads " + "+".join(HEAD_NAMES.get(h, h) for h in settings.heads)
    else:
        name = settings.family
    return recipe_identity(settings), name


def measured_speed(runs: list[RunInfo], family: str) -> str | None:
    """How long the newest finished run of ``family`` took on this machine, in words; None if there is none.

    Pages quote this instead of a promised figure: it is what this machine
    measured, on this data, the last time.
    """
    # Runs someone started: the automatic quick heads are a lighter recipe of the same family.
    run = next((r for r in runs if r.summary.kind == family and not r.automatic), None)
    if run is None:
        return None
    s = run.summary
    when = f"{run_recipe(run)[1]}, v{s.version}, {s.n_labelled:,} labelled samples"
    if s.seconds_per_epoch:
        return f"{s.seconds_per_epoch:.1f} s per epoch, {s.seconds:.0f} s in all ({when})"
    return f"{s.seconds:.0f} s ({when})"
