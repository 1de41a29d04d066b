"""The ``mm`` command: plugins, config, run, infer, extract."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

import pluggy

from mm_core import plugins
from mm_core.config import Config, dump
from mm_core.entry_points import summary
from mm_core.errors import ConfigError, MMError, PluginError
from mm_core.launch_flags import LaunchFlags, translate

log = logging.getLogger("mm")

SECTION_FLAGS = {"model": "model", "data": "data", "fsdp2_config": "parallel.fsdp2"}


def setup_logging() -> None:
    """INFO on rank 0, warnings only elsewhere, each line tagged with its rank under torchrun."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    fmt = f"[rank{rank}] %(message)s" if world > 1 else "%(message)s"
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=fmt, force=True)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugin", action="append", required=True, metavar="NAME",
        help="plugin entry point or module path; repeat to stack (the last one wins per hook)",
    )
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="run config (YAML or JSON) with sections model/data/parallel/training/logging")
    parser.add_argument("--model", metavar="FILE", help="a file holding only the model section (model.json)")
    parser.add_argument("--data", metavar="FILE", help="a file holding only the data section (data.json)")
    parser.add_argument("--fsdp2-config", metavar="FILE", help="a file holding parallel.fsdp2 (fsdp2_config.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="dotted overrides, e.g. training.lr=1e-4")


def prepare(args: argparse.Namespace, task: str, extra: Sequence[str] = ()) -> tuple[pluggy.PluginManager, Config]:
    """Load the plugins and build the validated effective config for ``task``."""
    pm = plugins.load_plugins(args.plugin)
    sections = {sec: getattr(args, flag) for flag, sec in SECTION_FLAGS.items() if getattr(args, flag)}
    launch: LaunchFlags = getattr(args, "launch_flags", None) or LaunchFlags()
    launch.warn()
    overrides = launch.overrides(plugins.merged_defaults(pm, task)) + list(args.overrides) + list(extra)
    if getattr(args, "resume", False):
        overrides.append("training.resume=true")
    return pm, plugins.make_config(pm, task, args.config, sections, overrides, plugin_name=args.plugin[-1])


def cmd_plugins(args: argparse.Namespace) -> int:
    """Print the installed plugins (from metadata alone), the hooks each implements, or who answers each hook."""
    if args.plugin:
        return _print_call_order(args.plugin)
    found = plugins.installed_plugins()
    if not found:
        print("no plugins installed (pip install mm-models-video, or a package with an 'mm.plugins' entry point)")
        return 0
    if args.hooks:
        rows = [(p.name, p.package, p.version, _hooks(p.name)) for p in found]
    else:
        rows = [(p.name, p.package, p.version, summary(p.value)) for p in found]
    print(_table(("name", "package", "version", "hooks" if args.hooks else "description"), rows))
    return 0


def _hooks(name: str) -> str:
    """The hooks plugin ``name`` implements, or why it failed to load."""
    try:
        pm = plugins.load_plugins([name])
    except MMError as exc:
        return f"(failed to load: {exc})"
    return ", ".join(plugins.hooks_of(pm, pm.get_plugin(name)))


def _print_call_order(names: list[str]) -> int:
    pm = plugins.load_plugins(names)
    print(f"plugin stack {', '.join(names)}: later plugins are tried first, mm-core's defaults last")
    rows = [(hook.name, "first result" if hook.firstresult else "every one", ", ".join(hook.plugins) or "-")
            for hook in plugins.call_order(pm)]
    print(_table(("hook", "calls", "implemented by, in call order"), rows))
    return 0


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``rows`` under ``header`` in left-aligned columns two spaces apart (the last column is not padded)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(f"{cell:<{w}}" for cell, w in zip(row, widths)), row[-1]]) for row in [header, *rows])


def cmd_config(args: argparse.Namespace) -> int:
    """Print the effective config."""
    _, config = prepare(args, "run")
    sys.stdout.write(dump(config))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Train."""
    from mm_core.runtime import create_runtime  # these import torch: not at the top, so `mm --help` is instant
    from mm_core.trainer import Trainer

    pm, config = prepare(args, "run")
    runtime = create_runtime(config, args.plugin[-1])
    try:
        result = Trainer(pm, runtime).train()
        if runtime.is_main and not result.stopped_by:
            losses = [result.losses[s] for s in sorted(result.losses)]
            metrics_file = result.output_dir / "metrics.jsonl"
            if losses:
                print(f"done: {result.step} steps, loss {losses[0]:.4f} → {losses[-1]:.4f}; metrics in {metrics_file}")
            else:
                print(f"done: already at step {result.step} of training.train_iters; raise it to train on")
            if result.checkpoint:
                print(f"checkpoint: {result.checkpoint}")
    finally:
        runtime.close()
    return 0


def _subcommand_with_section(hook_name: str, task: str, section: str):
    def run(args: argparse.Namespace, free: list[str]) -> int:
        from mm_core.runtime import create_runtime

        pm, config = prepare(args, task, [f"{section}.{k}" for k in free])
        if getattr(args, "checkpoint", None):
            config[section]["checkpoint"] = args.checkpoint
        runtime = create_runtime(config, args.plugin[-1])
        try:
            result = getattr(pm.hook, hook_name)(config=config, runtime=runtime)
            if result is None:
                raise MMError(f"plugin(s) {', '.join(args.plugin)} do not implement {hook_name!r}")
            if runtime.is_main:
                print(result)
        finally:
            runtime.close()
        return 0

    return run


def split_free_flags(argv: Sequence[str], known: set[str]) -> tuple[list[str], list[str]]:
    """Separate ``--name value`` pairs that are not ``known`` options into ``name=value`` overrides.

    ``--num-frames 9 --prompt "a cat"`` gives ``["num_frames=9", "prompt=a cat"]``.
    """
    rest: list[str] = []
    free: list[str] = []
    items = list(argv)
    while items:
        token = items.pop(0)
        name = token.split("=", 1)[0]
        if not token.startswith("--") or name in known:
            rest.append(token)
            if name in known and "=" not in token and items and name not in FLAG_ONLY:
                rest.append(items.pop(0))
            continue
        key, eq, value = token[2:].partition("=")
        if not eq:
            value = items.pop(0) if items and not items[0].startswith("--") else "true"
        free.append(f"{key.replace('-', '_')}={value}")
    return rest, free


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mm``."""
    parser = argparse.ArgumentParser(
        prog="mm", description="Train multimodal models with plugins and parallel engines."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list installed plugins, their hooks, or who answers each hook of a stack",
                       description="List the installed plugins (entry-point group mm.plugins) without importing them.")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--hooks", action="store_true", help="import each plugin and list the hooks it implements")
    shown.add_argument("--plugin", action="append", metavar="NAME",
                       help="load this stack as `mm run` would (repeat to stack) and show who implements each hook")
    p = sub.add_parser("config", help="print the effective config", description="Print the effective config of a run.")
    _add_config_args(p)
    p = sub.add_parser("run", help="train", description="Train with a plugin; works unchanged under torchrun.")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the output dir")
    p = sub.add_parser("infer", help="generate with a trained model",
                       description="Run the plugin's inference; any --name value sets inference.name.")
    _add_config_args(p)
    p.add_argument("--checkpoint", metavar="DIR", help="an mm training checkpoint or a Hugging Face directory")
    p = sub.add_parser("extract", help="encode a dataset into feature shards",
                       description="Run the plugin's feature extraction; any --name value sets extract.name.")
    _add_config_args(p)
    return parser


COMMANDS = {
    "plugins": cmd_plugins,
    "config": cmd_config,
    "run": cmd_run,
}
WITH_EXTRA = {
    "infer": _subcommand_with_section("inference", "infer", "inference"),
    "extract": _subcommand_with_section("extract_features", "extract", "extract"),
}
KNOWN_FLAGS = {"--plugin", "--config", "--model", "--data", "--fsdp2-config", "--checkpoint", "--help", "-h"}
FLAG_ONLY = {"--help", "-h"}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mm`` command."""
    setup_logging()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        launch = LaunchFlags()
        if argv and argv[0] in (*COMMANDS, *WITH_EXTRA) and argv[0] != "plugins":
            launch = translate(argv[1:])
            argv = [argv[0], *launch.argv]
        if argv and argv[0] in WITH_EXTRA:
            rest, free = split_free_flags(argv[1:], KNOWN_FLAGS)
            args = parser.parse_args([argv[0], *rest])
            args.launch_flags = launch
            return WITH_EXTRA[args.command](args, free)
        args, extra = parser.parse_known_args(argv)
        args.launch_flags = launch
        # Overrides may follow a flag (`mm run ... --resume training.lr=1e-5`): argparse leaves those over.
        stray = [token for token in extra if token.startswith("-") or "=" not in token]
        if stray or (extra and not hasattr(args, "overrides")):
            parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
        if extra:
            args.overrides = [*args.overrides, *extra]
        return COMMANDS[args.command](args)
    except MMError as exc:
        report_error(exc)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("TORCHELASTIC_ERROR_FILE"):  # torchrun's failure summary shows the traceback
            from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

            ErrorHandler().record_exception(exc)
        raise


def report_error(exc: MMError) -> None:
    """Print ``error: <message>`` (a config or plugin error from rank 0 only: every rank has the same) and hand
    the line to torchrun's failure summary through its error file."""
    message = f"error: {exc}"
    if int(os.environ.get("RANK", "0")) == 0 or not isinstance(exc, (ConfigError, PluginError)):
        print(message, file=sys.stderr)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        with open(error_file, "w", encoding="utf-8") as f:
            json.dump({"message": message, "timestamp": int(time.time())}, f)


if __name__ == "__main__":
    sys.exit(main())
