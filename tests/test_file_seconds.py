"""tools/suite_file_seconds.py and tests/file_seconds.json, which order the suite's files
for the pytest-xdist workers (tests/conftest.py: heaviest first)."""
import os

from tools.suite_file_seconds import TABLE, file_seconds, file_weight, load_table


def test_phases_are_summed_by_file_heaviest_first():
  log = ["     2.50      2.10 setup    passed  gw0 tests/test_a.py::test_x[1]",
         "     1.00      0.90 call     passed  gw0 tests/test_a.py::test_x[1]",
         "     4.00      3.00 call     failed  gw1 tests/test_b.py::test_y",
         "     0.25      0.20 call     passed  -   tests/test_c.py::TestZ::test_z",
         "",
         "not a record"]
  assert list(file_seconds(log).items()) == [("tests/test_b.py", 4.0), ("tests/test_a.py", 3.5),
                                             ("tests/test_c.py", 0.2)]


def test_checked_in_seconds_name_existing_test_files():
  seconds = load_table()
  assert len(seconds) > 20
  root = os.path.dirname(os.path.dirname(TABLE))
  missing = [path for path in seconds if not os.path.isfile(os.path.join(root, path))]
  assert not missing, f"tests/file_seconds.json names files that are gone: {missing}"
  assert all(value >= 0 for value in seconds.values())


def test_collection_runs_the_heaviest_files_first(request):
  """This session's collection order (tests/conftest.py) follows file_seconds.json."""
  table = load_table()
  files = []
  for item in request.session.items:
    path = item.nodeid.split("::")[0]
    if not files or files[-1] != path:
      files.append(path)
  assert len(files) == len(set(files)), "a file's tests are split apart"
  weights = [file_weight(table, path) for path in files]
  assert weights == sorted(weights, reverse=True)
