"""What the three command lines share: ``--config``, ``--set KEY=VALUE``, a ``--help`` that lists
every section and key, and one-line errors (exit status 2 for bad input, 130 for Ctrl-C, 1 for a
full disk) instead of tracebacks."""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable

from llm.config.build import help_epilog
from llm.config.errors import ConfigError


def config_parser(prog: str, description: str, root: type, title: str, docs: str,
                  config_required: bool = True) -> argparse.ArgumentParser:
    """An ArgumentParser with ``--config`` and ``--set``; ``--help`` lists ``root``'s keys."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=help_epilog(root, title, docs),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=config_required, help="YAML config file (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set train.update.delta=0.02 (repeatable)")
    return parser


def run_main(body: Callable[[], int]) -> int:
    """Run a command's body; bad input, Ctrl-C and a full disk end with one line on stderr."""
    try:
        return body()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the run directory is consistent; rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"error: disk full while writing {err.filename or 'the run directory'}: the run directory is "
                  "consistent; free space and rerun the same command to resume", file=sys.stderr)
            return 1
        raise
