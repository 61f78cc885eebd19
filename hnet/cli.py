"""How the command-line programs (hnet.main, tools/) report a user's mistake: one line
that says what to do, `error: ...`, exit status 1. The traceback is printed only with
--verbose or HNET_VERBOSE=1.

  from hnet import cli
  if __name__ == "__main__":
    cli.run(main)             # absl programs: app.run(main) with that reporting
    cli.report(argparse_main) # programs that parse their own arguments
"""
from __future__ import annotations

import os
import sys
from typing import Callable

from absl import app, flags

flags.DEFINE_bool("verbose", False, "print the whole traceback of an error "
                  "(also HNET_VERBOSE=1)")


def verbose() -> bool:
  if os.environ.get("HNET_VERBOSE", "") not in ("", "0"):
    return True
  return "--verbose" in sys.argv[1:] or (flags.FLAGS.is_parsed() and flags.FLAGS.verbose)


def is_user_error(error: BaseException) -> bool:
  """Errors raised for bad input (config, data, checkpoints, a diverged run): their
  message already says what to do. Anything else is a bug and keeps its traceback."""
  return (isinstance(error, (ValueError, FileNotFoundError, app.UsageError))
          or type(error).__module__.startswith("hnet."))


def one_line(error: BaseException) -> str:
  return (f"error: {error}  (--verbose or HNET_VERBOSE=1 shows the traceback)")


def report(main: Callable[[], object]) -> object:
  """Calls main(); a user error exits with one line (see module docstring)."""
  try:
    return main()
  except Exception as e:  # pylint: disable=broad-except
    if verbose() or not is_user_error(e):
      raise
    sys.exit(one_line(e))


def run(main: Callable[[list[str]], object]) -> None:
  """absl's app.run(main) with user errors reported as one line."""
  report(lambda: app.run(main))
