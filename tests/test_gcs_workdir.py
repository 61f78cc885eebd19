"""--workdir=gs://... and a TFDS data_dir on gs:// end to end, against a local GCS
emulator on 127.0.0.1 that each test starts and stops (tests/gcs_emulator.py): the real
orbax/tensorstore, gcsfs (etils.epath), tensorboardX and array_record clients talk to it."""
import json
import subprocess
import sys
import time
import warnings

import pytest

from hnet.testing import subprocess_env

from gcs_emulator import gcs_emulator
from test_train_loop import ROOT, corpus, overrides, run_cli, train_losses  # noqa: F401 (fixture)
from test_workdir import check_lock_semantics

BUCKET = "hnet-test"


@pytest.fixture(scope="module")
def gcs_env(tmp_path_factory):
  """One emulator for this module; in-process clients (gcsfs via etils.epath) are pointed
  at it through os.environ, subprocesses get the returned environment."""
  with gcs_emulator(BUCKET, str(tmp_path_factory.mktemp("gcs"))) as env:
    with pytest.MonkeyPatch.context() as patch:
      for key, value in env.items():
        patch.setenv(key, value)
      yield env


def _gcs(env):
  """A gcsfs client of the emulator for the test's own reads and writes."""
  import gcsfs
  return gcsfs.GCSFileSystem(token="anon", endpoint_url=env["STORAGE_EMULATOR_HOST"],
                             skip_instance_cache=True)


def _cli(args, env, timeout=300, **popen):
  full_env = subprocess_env(**env)
  if popen:
    return subprocess.Popen([sys.executable] + args, cwd=ROOT, env=full_env, **popen)
  return subprocess.run([sys.executable] + args, cwd=ROOT, env=full_env, capture_output=True,
                        text=True, timeout=timeout)


def _train_args(workdir, corpus, **extra):  # noqa: F811
  return (["-m", "hnet.main", "--config=configs/transformer_tiny.py", f"--workdir={workdir}"]
          + overrides(corpus, **extra))


@pytest.mark.slow
def test_gs_workdir_train_kill_resume_eval_sample(corpus, tmp_path, gcs_env):  # noqa: F811
  settings = {"checkpoint.async_save": True,  # orbax's asynchronous save, to gs:// too
              "train.steps": 12, "checkpoint.every": 4}
  reference = run_cli(tmp_path / "local", corpus, **settings)
  assert reference.returncode == 0, reference.stderr[-2000:]
  expected = train_losses(tmp_path / "local")
  env = gcs_env
  gcs = _gcs(env)
  workdir = f"gs://{BUCKET}/runs/tiny"
  proc = _cli(_train_args(workdir, corpus, **settings), env, stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL)
  committed = f"{BUCKET}/runs/tiny/checkpoints/4/commit_success.txt"  # orbax's mark on GCS
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    gcs.invalidate_cache()
    if gcs.exists(committed):
      break
    time.sleep(0.2)
  proc.kill()  # SIGKILL: its lock.json stays behind, as after a lost host
  proc.wait()
  assert gcs.exists(f"{BUCKET}/runs/tiny/lock.json")

  resumed = _cli(_train_args(workdir, corpus, **settings), env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from step" in resumed.stderr
  assert "taking over the stale workdir lock" in resumed.stderr
  gcs.invalidate_cache()
  metrics = f"{BUCKET}/runs/tiny/metrics.jsonl"
  records = [json.loads(line) for line in gcs.cat(metrics).decode().splitlines()]
  train = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train] == sorted(expected)  # each step once, none replayed twice
  for record in train:
    assert record["loss"] == pytest.approx(expected[record["step"]], rel=1e-6, abs=1e-6)
  names = {path.rsplit("/", 1)[-1] for path in gcs.ls(f"{BUCKET}/runs/tiny")}
  assert {"config.json", "summary.json", "metrics.jsonl", "tb", "checkpoints"} <= names
  assert "lock.json" not in names
  assert any("tfevents" in path for path in gcs.ls(f"{BUCKET}/runs/tiny/tb"))

  evaluated = _cli(["tools/eval.py", f"--workdir={workdir}", "--max_batches=2"], env)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  result = json.loads(evaluated.stdout[evaluated.stdout.index("{"):])
  assert result["step"] == 12 and 0 < result["bpb"] < 16
  sampled = _cli(["tools/sample.py", f"--workdir={workdir}", "--prompt=The ", "--max_new_bytes=8",
                  "--temperature=0"], env)
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert "--- step 12 | prompt 'The '" in sampled.stdout


def test_workdir_lock_on_gcs(gcs_env, caplog, monkeypatch):
  from hnet import storage
  check_lock_semantics(storage.resolve(f"gs://{BUCKET}/locked"), caplog, monkeypatch)


def test_unreadable_step_is_moved_aside_on_gcs(gcs_env):
  """gs:// has no rename: moving a step aside copies it to <step>.unreadable and deletes it."""
  import numpy as np
  from hnet import checkpoint
  manager = checkpoint.make_manager(f"gs://{BUCKET}/aside/checkpoints", keep=None, async_save=False)
  state = {"x": np.arange(6, dtype=np.float32)}
  checkpoint.save(manager, 1, state, force=True)
  checkpoint.save(manager, 2, state, force=True)
  before = sorted(_gcs(gcs_env).find(f"{BUCKET}/aside/checkpoints/2"))
  moved = checkpoint.move_aside(manager, 2, "unreadable")
  assert moved == f"gs://{BUCKET}/aside/checkpoints/2.unreadable"
  after = sorted(_gcs(gcs_env).find(f"{BUCKET}/aside/checkpoints/2.unreadable"))
  assert [p.replace("/2.unreadable/", "/2/") for p in after] == before and before
  assert manager.all_steps() == [1]  # orbax does not read the moved step
  checkpoint.save(manager, 2, state, force=True)  # and the step can be saved again
  assert sorted(manager.all_steps()) == [1, 2]
  manager.close()


READ_DOCUMENTS = """
import json, sys
from configs import base
from hnet.data import pipeline, sources
c = base.get_config().data
c.source, c.tfds_name, c.tfds_data_dir = "tfds", "hnet_text_files", sys.argv[1]
docs = {s: sorted(d.hex() for d in sources.load_documents(c, s)[:]) for s in ("train", "eval")}
batches = list(pipeline.make_iterator(c, "eval", seq_len=8, global_batch_size=2, repeat=False))
print(json.dumps({"docs": docs, "targets": sum(float(b["loss_mask"].sum()) for b in batches)}))
"""


def test_tfds_data_dir_on_gcs(tmp_path, gcs_env):
  from configs import base
  from hnet.data import sources, tfds_builder
  src = tmp_path / "src"
  src.mkdir()
  for i in range(10):
    (src / f"{i}.txt").write_bytes(f"text file {i} \xff".encode("latin-1"))
  local = tmp_path / "tfds"
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # tfds/absl noise
    tfds_builder.build_text_files(str(src), str(local), eval_fraction=0.25)
  files = base.get_config().data
  files.source, files.path, files.eval_fraction = "files", str(src), 0.25
  expected = {s: sorted(d.hex() for d in sources.load_documents(files, s)) for s in ("train", "eval")}
  _gcs(gcs_env).put(str(local) + "/", f"{BUCKET}/tfds", recursive=True)
  read = _cli(["-c", READ_DOCUMENTS, f"gs://{BUCKET}/tfds"], gcs_env)
  assert read.returncode == 0, read.stderr[-3000:]
  got = json.loads(read.stdout.strip().splitlines()[-1])
  assert got["docs"] == expected and got["docs"]["eval"]
  packed = sum(len(bytes.fromhex(d)) + 1 for d in expected["eval"])  # each doc + its end byte
  assert got["targets"] == packed
