"""The Converter base class: a model family's subcommands, each a method taking an options dataclass."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from mm_convert.errors import ConvertError

SUBCOMMAND = "_mm_convert_options"


@dataclass(frozen=True)
class Subcommand:
    """One subcommand: its name, options dataclass, one-line help and the method that runs it."""

    name: str
    options: type
    help: str
    method: Callable[..., str]


def subcommand(options: type) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Mark a Converter method ``def name(self, opts) -> str`` as subcommand ``name`` taking ``options``."""

    def mark(method: Callable[..., str]) -> Callable[..., str]:
        setattr(method, SUBCOMMAND, options)
        return method

    return mark


class Converter:
    """A model family's checkpoint conversions; ``aliases`` maps other subcommand names (the seeds') to ours and
    ``other_names`` are the converter's names elsewhere (MindSpeed-MM's ``WanConverter``)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    aliases: ClassVar[dict[str, str]] = {}
    other_names: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def subcommands(cls) -> dict[str, Subcommand]:
        """The subcommands this converter offers, in the order they are defined: its own, then its bases'."""
        found: dict[str, Subcommand] = {}
        for klass in cls.__mro__:
            for name, member in vars(klass).items():
                options = getattr(member, SUBCOMMAND, None)
                if options is not None and name not in found:
                    doc = inspect.getdoc(member) or ""
                    found[name] = Subcommand(name, options, doc.splitlines()[0] if doc else "", member)
        return found

    def run(self, name: str, opts: Any) -> str:
        """Run subcommand ``name`` (or an alias) with its parsed options; returns the line to print."""
        commands = self.subcommands()
        command = commands.get(self.aliases.get(name, name))
        if command is None:
            raise ConvertError(f"{self.name} has no subcommand {name!r} (subcommands: {', '.join(commands)})")
        return command.method(self, opts)
