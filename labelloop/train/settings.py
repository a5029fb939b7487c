"""Training settings: what every family's settings class is made of.

A family's settings are one frozen dataclass (``HeadsSettings``,
``ResnetScratchSettings``, ...) whose fields are made with :func:`setting`:
its default, the label and help a user sees, and its bounds or choices. The
CLI's flags, the Train page's form and :meth:`FamilySettings.validate` are
all built from those fields, so a family shows, takes and records exactly
the settings it reads, and nothing else.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from labelloop.errors import UserError

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
CLASS_WEIGHTINGS = ("balanced", "none")
# crop-flip-jitter: random resized crop (0.8-1), flip, rotation 10, shear 8 / scale 0.85-1.15, colour jitter .15,
# erasing 5%: the augmentation the ResNet-18 recipe was tuned with. randaugment: torchvision's RandAugment.
IMAGE_AUGMENTATIONS = ("crop-flip-jitter", "randaugment", "none")


def setting(default, label: str, help: str, *, minimum: float | None = None, maximum: float | None = None, choices: tuple | None = None, none: str = "", flag: str | None = None, aliases: tuple[str, ...] = ()):
    """A settings field: ``default`` plus what the form, the CLI and validation need to know about it.

    ``minimum``/``maximum`` bound a number (each item of a tuple); ``choices`` lists the allowed
    values (of each item of a tuple); ``none`` names what None means ("automatic"); ``flag`` is the
    CLI option (default: ``--field-name``), ``aliases`` more spellings of it.
    """
    metadata = {"label": label, "help": help, "minimum": minimum, "maximum": maximum, "choices": choices, "none": none, "flag": flag, "aliases": aliases}
    if isinstance(default, (tuple, list)):
        return dataclasses.field(default=tuple(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class SettingInfo:
    """One setting as the form and the CLI see it."""

    name: str
    label: str
    help: str
    kind: type  # int, float or str (of each item, for a tuple)
    is_tuple: bool
    optional: bool
    default: Any
    minimum: float | None
    maximum: float | None
    choices: tuple | None
    none: str
    flag: str
    aliases: tuple[str, ...]

    def parse(self, text: str):
        """The value of a CLI argument (a tuple from comma-separated text), or a UserError."""
        if not self.is_tuple:
            try:
                return self.kind(text)
            except ValueError:
                raise UserError(f"{self.flag} takes a {self.kind.__name__}, not '{text}'.") from None
        try:
            return tuple(self.kind(part.strip()) for part in text.split(",") if part.strip())
        except ValueError:
            raise UserError(f"{self.flag} takes comma-separated {'numbers' if self.kind is not str else 'names'}, not '{text}'.") from None


def _describe_type(annotation) -> tuple[type, bool, bool]:
    """(item type, is a tuple, may be None) of a field annotation such as ``tuple[int, ...] | None``."""
    optional = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional, annotation = True, members[0]
    if typing.get_origin(annotation) is tuple:
        return typing.get_args(annotation)[0], True, optional
    return annotation, False, optional


@dataclass(frozen=True)
class FamilySettings:
    """Base of every family's settings: the seed every family reads, validation, (de)serialisation."""

    family: ClassVar[str]

    seed: int = setting(42, "Random seed", "Same seed, same settings, same version: the same splits and numbers.", minimum=0, maximum=2**31 - 1)

    # ------------------------------------------------------------------ what the settings are

    @classmethod
    def settings(cls) -> list[SettingInfo]:
        hints = typing.get_type_hints(cls)
        out = []
        # The family's own settings first, the seed every family shares last.
        for f in sorted(fields(cls), key=lambda f: f.name == "seed"):
            kind, is_tuple, optional = _describe_type(hints[f.name])
            m = f.metadata
            out.append(SettingInfo(
                f.name, m["label"], m["help"], kind, is_tuple, optional, f.default, m["minimum"], m["maximum"], m["choices"], m["none"],
                m["flag"] or "--" + f.name.replace("_", "-"), tuple(m["aliases"]),
            ))
        return out

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Raise a UserError naming the first setting that is out of range, and what is allowed."""
        for info in self.settings():
            value = getattr(self, info.name)
            if value is None:
                if not info.optional:
                    self.refuse(f"{info.label} needs a value.")
                continue
            items = value if info.is_tuple else (value,)
            if info.is_tuple and not items:
                self.refuse(f"{info.label} needs at least one value.")
            for item in items:
                if info.choices is not None and item not in info.choices:
                    self.refuse(f"{info.label}: '{item}' is not one of {', '.join(map(str, info.choices))}.")
                if info.minimum is not None and item < info.minimum or info.maximum is not None and item > info.maximum:
                    self.refuse(f"{info.label} must be {_number(info.minimum)} to {_number(info.maximum)}, not {item}.")
            if info.is_tuple and info.choices is not None and len(set(items)) != len(items):
                self.refuse(f"{info.label}: give each of {', '.join(map(str, info.choices))} at most once, not {', '.join(map(str, items))}.")
        self.check()

    def check(self) -> None:
        """Rules between settings of one family (a subclass adds its own)."""

    @classmethod
    def refuse(cls, message: str) -> typing.NoReturn:
        raise UserError(f"Invalid training setting for {cls.family}: {message}")

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict:
        """Every setting this family read, and the family: what a run's config.json records."""
        return {"family": self.family, **{f.name: _plain(getattr(self, f.name)) for f in fields(self)}}

    @classmethod
    def from_dict(cls, data: dict) -> FamilySettings:
        """Settings from a config.json (this format, or the flat one runs wrote before families had their own)."""
        data = cls.upgrade(dict(data))
        known = {}
        for info in cls.settings():
            if info.name in data and data[info.name] is not None:
                known[info.name] = tuple(data[info.name]) if info.is_tuple else data[info.name]
            elif info.name in data:
                known[info.name] = None
        return cls(**known)

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        """Rename the keys of an older config.json to this family's names (a subclass knows its own)."""
        if data.get("augmentation") == "seed-001":
            data["augmentation"] = "crop-flip-jitter"
        return data


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _number(value) -> str:
    if value is None:
        return "any"
    return f"{value:,}" if float(value).is_integer() and abs(value) >= 1000 else f"{value:g}"
