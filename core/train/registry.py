"""Every training family, by name: the one list the CLI, the Train page and prediction are built from.

Adding a family: write its module (a ``FamilySettings`` subclass and a
``Family`` subclass, see ``core.train.family``) and add it to ``FAMILIES``.
"""

from __future__ import annotations

from core.errors import UserError
from core.train import frozen, heads, resnet, triplet
from core.train.family import Family
from core.train.settings import FamilySettings

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
