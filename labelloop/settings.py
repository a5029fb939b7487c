"""Settings declared once: each field's default, the label and help a user sees, and its bounds or choices.

A settings class (a training family's, the embedder's :class:`~labelloop.embed.config.EmbedderConfig`,
the map's :class:`~labelloop.maps.config.ProjectionConfig`, the compute setting
:class:`~labelloop.compute.device.Compute`) is a frozen dataclass of :class:`Settings` whose fields are
made with :func:`setting`. The CLI's flags, the app's widgets and :meth:`Settings.validate` are all
built from those fields, so a setting is shown, taken and checked the same way everywhere, and a new
one needs no code outside its declaration. Rules that tie settings together (or that a bound cannot
say, such as a device named ``cuda:1``) go in the class's :meth:`Settings.check`.

This module is the lowest layer beside ``labelloop.errors``: it imports nothing else of labelloop.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from labelloop.errors import UserError


def setting(default, label: str, help: str, *, minimum: float | None = None, maximum: float | None = None, choices: tuple | None = None,
            none: str = "", flag: str | None = None, aliases: tuple[str, ...] = (), length: int | None = None):
    """A settings field: ``default`` plus what the widgets, the CLI and validation need to know about it.

    ``minimum``/``maximum`` bound a number (each item of a tuple); ``choices`` lists the allowed
    values (of each item of a tuple); ``none`` names what None means ("the model's own");
    ``flag`` is the CLI option (default: ``--field-name``), ``aliases`` more spellings of it;
    ``length`` is the number of items a tuple must have (None: one or more).
    """
    metadata = {"label": label, "help": help, "minimum": minimum, "maximum": maximum, "choices": choices, "none": none,
                "flag": flag, "aliases": aliases, "length": length}
    if isinstance(default, (tuple, list)):
        return dataclasses.field(default=tuple(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class SettingInfo:
    """One setting as the widgets and the CLI see it."""

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
    length: int | None = None

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

    def shown(self, value=dataclasses.MISSING) -> str:
        """A value (default: the default) as the CLI's help and the widgets write it."""
        value = self.default if value is dataclasses.MISSING else value
        if value is None:
            return self.none or "none"
        return ",".join(map(str, value)) if self.is_tuple else str(value)


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
class Settings:
    """Base of every settings class: what its settings are, and validation against their declarations."""

    # What the settings are of, in an error message: "Invalid <subject> setting: ...".
    subject: ClassVar[str] = "setting"

    @classmethod
    def settings(cls) -> list[SettingInfo]:
        """Every declared setting, in declaration order (a subclass may reorder: see FamilySettings)."""
        hints = typing.get_type_hints(cls)
        out = []
        for f in cls.ordered_fields():
            if "label" not in f.metadata:
                continue  # a field not made with setting(): internal, not shown or taken
            kind, is_tuple, optional = _describe_type(hints[f.name])
            m = f.metadata
            out.append(SettingInfo(
                f.name, m["label"], m["help"], kind, is_tuple, optional, f.default, m["minimum"], m["maximum"], m["choices"], m["none"],
                m["flag"] or "--" + f.name.replace("_", "-"), tuple(m["aliases"]), m["length"],
            ))
        return out

    @classmethod
    def ordered_fields(cls) -> list[dataclasses.Field]:
        return list(fields(cls))

    @classmethod
    def setting_info(cls, name: str) -> SettingInfo:
        return next(info for info in cls.settings() if info.name == name)

    def changed_from(self, reference: Settings) -> list[str]:
        """The settings that differ from ``reference`` (e.g. the defaults), as "<label> <value>"."""
        return [f"{info.label} {info.shown(getattr(self, info.name))}" for info in self.settings()
                if getattr(self, info.name) != getattr(reference, info.name)]

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
            if info.length is not None and len(items) != info.length:
                self.refuse(f"{info.label} takes {info.length} values, not {len(items)} ({info.shown(value)}).")
            for item in items:
                if info.kind in (int, float) and (isinstance(item, bool) or not isinstance(item, numbers.Integral if info.kind is int else numbers.Real)):
                    self.refuse(f"{info.label} takes {'whole numbers' if info.kind is int else 'numbers'}, not {item!r}.")
                if info.choices is not None and item not in info.choices:
                    self.refuse(f"{info.label}: '{item}' is not one of {', '.join(map(str, info.choices))}.")
                if info.minimum is not None and item < info.minimum or info.maximum is not None and item > info.maximum:
                    self.refuse(f"{info.label} must be {_number(info.minimum)} to {_number(info.maximum)}, not {item}.")
            if info.is_tuple and info.choices is not None and len(set(items)) != len(items):
                self.refuse(f"{info.label}: give each of {', '.join(map(str, info.choices))} at most once, not {', '.join(map(str, items))}.")
        self.check()

    def check(self) -> None:
        """Rules between settings, or that a bound cannot say (a subclass adds its own)."""

    @classmethod
    def refuse(cls, message: str) -> typing.NoReturn:
        raise UserError(f"Invalid {cls.subject} setting: {message}")


def _number(value) -> str:
    if value is None:
        return "any"
    return f"{value:,}" if float(value).is_integer() and abs(value) >= 1000 else f"{value:g}"
