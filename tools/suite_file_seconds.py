"""Per-file test seconds from an HNET_TEST_TIMES log, as tests/file_seconds.json wants them.

  HNET_TEST_TIMES=/tmp/t.txt bash launch/test.sh --all
  python tools/suite_file_seconds.py /tmp/t.txt > tests/file_seconds.json

tests/conftest.py hands the heaviest files to the pytest-xdist workers first (a file runs
on one worker, `--dist loadfile`), so that no long file starts last while the other worker
idles. Each line of the log is "<wall s> <CPU s> <phase> <outcome> <worker> <test id>".
"""
import collections
import json
import os
import sys

TABLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                     "file_seconds.json")
UNMEASURED_SECONDS = 30.0  # a test file not in the table yet


def load_table(path: str = TABLE) -> dict[str, float]:
  """The checked-in seconds per test file; {} when the table is missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def file_weight(table: dict[str, float], nodeid: str) -> float:
  """Seconds a test's file is expected to take, from its pytest node id."""
  return table.get(nodeid.split("::")[0], UNMEASURED_SECONDS)


def file_seconds(lines) -> dict[str, float]:
  """Wall seconds of every phase of every test, summed by file, heaviest first."""
  totals = collections.Counter()
  for line in lines:
    fields = line.split()
    if len(fields) >= 6:
      totals[fields[5].split("::")[0]] += float(fields[0])
  return {path: round(seconds, 1) for path, seconds in totals.most_common()}


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit(__doc__)
  with open(sys.argv[1]) as f:
    print(json.dumps(file_seconds(f), indent=1))
