"""The ``mm-convert CONVERTER SUBCOMMAND [--cfg.a.b VALUE ...]`` command."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence

from mm_convert.converter import Converter
from mm_convert.errors import ConvertError
from mm_convert.options import (
    REQUIRED,
    build_options,
    config_file_flags,
    option_fields,
    options_yaml,
    parse_flags,
    resolve_aliases,
    type_name,
)
from mm_convert.registry import collect_converters, declared_converters
from mm_core.errors import MMError

USAGE = ("usage: mm-convert CONVERTER SUBCOMMAND [--cfg.NAME VALUE ...] [--config FILE.yaml] [--print_config]   "
         "(--NAME VALUE works too)")
HELP = ("-h", "--help")
SWITCHES = (*HELP, "--print_config")


def overview(converters: dict[str, str]) -> str:
    """Every converter (name -> description) on a line of its own."""
    lines = [USAGE, "", "converters (from the installed mm plugins):"]
    lines += [f"  {name}: {converters[name]}" for name in sorted(converters)]
    if not converters:
        lines.append("  none: install a plugin package such as mm-models-video")
    lines += ["", "mm-convert CONVERTER lists its subcommands; mm-convert CONVERTER SUBCOMMAND --help a subcommand's "
              "options"]
    return "\n".join(lines)


def converter_help(converter: type[Converter]) -> str:
    """One converter's subcommands."""
    lines = [f"usage: mm-convert {converter.name} SUBCOMMAND [--cfg.NAME VALUE ...]", "", converter.description, ""]
    lines += [f"  {sub.name:<16} {sub.help}" for sub in converter.subcommands().values()]
    lines += [f"  {alias:<16} same as {name}" for alias, name in converter.aliases.items()]
    return "\n".join(lines)


def subcommand_help(converter: type[Converter], name: str) -> str:
    """One subcommand's options with their types and defaults."""
    sub = converter.subcommands()[converter.aliases.get(name, name)]
    lines = [f"usage: mm-convert {converter.name} {name} [--cfg.NAME VALUE ...]", "", sub.help, "", "options:"]
    for dotted, kind, default, text in option_fields(sub.options):
        value = "required" if default is REQUIRED else f"default: {default}"
        lines.append(f"  --cfg.{dotted} ({type_name(kind)}, {value})  {text}")
    return "\n".join(lines)


def _pick(name: str, choices: Sequence[str], what: str) -> str:
    if name in choices:
        return name
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ConvertError(f"unknown {what} {name!r} ({hint}known: {', '.join(choices) or 'none'})")


def _split_mode(tokens: list[str]) -> tuple[str | None, list[str]]:
    """``--mode NAME`` (convert_ckpt.py's way of naming the subcommand) taken out of ``tokens``."""
    for i, token in enumerate(tokens):
        if token == "--mode" and i + 1 < len(tokens):
            return tokens[i + 1], tokens[:i] + tokens[i + 2:]
        if token.startswith("--mode="):
            return token.split("=", 1)[1], tokens[:i] + tokens[i + 1:]
    return None, tokens


def _split_subcommand(tokens: list[str]) -> tuple[str | None, list[str]]:
    """The subcommand taken out of ``tokens``: the first word where an option would stand, else ``--mode NAME``.

    Options may come before it (``--version v1.3 vae_convert --cfg.x 1``): each takes a value, so a word right after
    an option without ``=`` is that option's value, not the subcommand.
    """
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("-"):
            return token, tokens[:i] + tokens[i + 1:]
        i += 1 if token in SWITCHES or "=" in token else 2
    return _split_mode(tokens)


def run(argv: Sequence[str]) -> str:
    """Parse ``argv`` and run it; returns the text to print."""
    if not argv or argv[0] in HELP:
        return overview(declared_converters())
    registry = collect_converters()
    by_other_name = {other: c for c in registry.values() for other in c.other_names}
    converter = by_other_name.get(argv[0]) or registry[_pick(argv[0], sorted(registry), "converter")]
    rest = list(argv[1:])
    name, rest = _split_subcommand(rest)
    if name is None:
        return converter_help(converter)
    name = _pick(name, [*converter.subcommands(), *converter.aliases], f"{converter.name} subcommand")
    if any(token in HELP for token in rest):
        return subcommand_help(converter, name)
    options = converter.subcommands()[converter.aliases.get(name, name)].options
    rest, print_config = [t for t in rest if t != "--print_config"], "--print_config" in rest
    flags = parse_flags(rest)
    config_file = flags.pop("config", None)
    if config_file is not None:
        flags = {**config_file_flags(config_file), **flags}
    opts = build_options(options, resolve_aliases(flags, options), f"{converter.name} {name}")
    if print_config:
        return options_yaml(opts)
    return converter().run(name, opts)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mm-convert``: prints the result, or one error line and exits with status 2."""
    try:
        print(run(list(sys.argv[1:] if argv is None else argv)))
    except MMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
