"""The ``vaenas`` command line: argparse and dispatch. Exit codes: 0 success, 1 failure, 2 bad input
(one line on stderr). The commands live in :mod:`studies.commands` (studies), :mod:`studies.export_cmd`
(export) and :mod:`studies.train_cmd` (train, retrain)."""

from __future__ import annotations

import argparse
import os
import sys

from search_space import VaenasInputError

from .commands import space_parser, study_args, study_parsers
from .export_cmd import export_parser
from .invocation import CliError  # noqa: F401 - re-exported: the command line's bad-input error
from .train_cmd import retrain_parser, train_parser


class _HelpWithDefaults(argparse.HelpFormatter):
    """Every option's help ends with its default (when it has one that says something)."""

    def _get_help_string(self, action):
        h = action.help or ""
        if (action.option_strings and "%(default)" not in h and "default" not in h
                and not any(action.default is v for v in (None, False, argparse.SUPPRESS))):
            h += " (default: %(default)s)"
        return h


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vaenas", description="Search for small, fast, low-bit VAEs.",
                                 formatter_class=_HelpWithDefaults)
    sub = ap.add_subparsers(dest="command", required=True)
    _add = sub.add_parser
    sub.add_parser = lambda *a, **kw: _add(*a, formatter_class=_HelpWithDefaults, **kw)  # type: ignore[method-assign]
    train_parser(sub)
    study_parsers(sub)
    export_parser(sub, study_args)
    retrain_parser(sub)
    space_parser(sub)
    return ap


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (kill, a scheduler's stop) is handled like Ctrl-C: the trial is marked interrupted


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)
    try:
        return args.func(args)
    except VaenasInputError as e:
        print(f"vaenas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vaenas: interrupted", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `vaenas show ... | head`: the reader left; nothing to report
        sys.stderr = open(os.devnull, "w")
        return 0
    except Exception as e:  # a failure, not bad input: one line, exit 1
        plain = getattr(e, "plain", False)  # a failure that names itself (e.g. "database unreachable: ...")
        print(f"vaenas: {e}" if plain else f"vaenas: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
