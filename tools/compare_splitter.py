"""Compare hnet's HAT word splitter with the published `hat-splitter` (Aleph Alpha's Rust
wheel), word boundaries and speed, side by side in one run.

The published splitter is not a dependency of hnet (its licence keeps it out of the
requirements and the tests): install it in a scratch environment outside the repository
and pass that environment's python:

  python3 -m venv /tmp/hatsplit && /tmp/hatsplit/bin/pip install hat-splitter==0.1.10
  python tools/compare_splitter.py --reference_python=/tmp/hatsplit/bin/python

Corpora (each capped at --bytes_per_corpus UTF-8 bytes, whole documents, the last one cut
at a character boundary):
  english   the embedded corpus (data/corpus: Shakespeare, Milton, Britannica), train split
  code      this repository's Python files (hnet/, tools/, tests/), one file per document
  de ru ar zh ja ko   the translated messages (msgstr) of the gettext catalogs installed
            under /usr/share/locale/<lang>/LC_MESSAGES/*.mo (coreutils, glib, gtk, apt, ...;
            the iso_* name lists skipped), one message per document
A corpus whose source is missing on this machine is skipped with a note.

Word-boundary F1: the cuts between words (code-point offsets inside each document) of
hnet's `split_text` against the published `split`; precision = shared cuts / our cuts,
recall = shared cuts / its cuts. Throughput: both sides split the same documents, str in
and a list of str out, best of --repeats passes, in CPU seconds of their own process (the
reference runs in a child process, timed there); rounds alternate reference and ours so
both see the same load. "bytes in" is hnet's `split` (bytes in, bytes out), which the
data pipeline uses. MB = 1e6 UTF-8 bytes.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import collections  # noqa: E402
import gettext  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import unicodedata  # noqa: E402

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_CORPORA = ("english", "code", "de", "ru", "ar", "zh", "ja", "ko")
LOCALES = {"de": "de", "ru": "ru", "ar": "ar", "zh": "zh_CN", "ja": "ja", "ko": "ko"}

# Runs in the reference environment: splits every document, times best-of-repeats passes.
REFERENCE_SCRIPT = r"""
import json, sys, time
from hat_splitter import HATSplitter
corpora = json.load(open(sys.argv[1]))
repeats = int(sys.argv[3])
splitter = HATSplitter()
out = {}
for name, docs in corpora.items():
  best = float("inf")
  for _ in range(repeats):
    start = time.process_time()
    words = [splitter.split(doc) for doc in docs]
    best = min(best, time.process_time() - start)
  out[name] = {"cpu_s": best, "lengths": [[len(w) for w in ws] for ws in words]}
json.dump(out, open(sys.argv[2], "w"))
"""


def _cap_documents(docs, limit):
  """Whole documents until `limit` UTF-8 bytes, the last one cut at a character."""
  out, used = [], 0
  for doc in docs:
    if not doc:
      continue
    size = len(doc.encode("utf-8", "surrogatepass"))
    if used + size > limit:
      doc = doc.encode("utf-8")[:limit - used].decode("utf-8", "ignore")
      if doc:
        out.append(doc)
      break
    out.append(doc)
    used += size
  return out


def _gettext_messages(locale):
  docs = []
  for path in sorted(glob.glob(f"/usr/share/locale/{locale}/LC_MESSAGES/*.mo")):
    if os.path.basename(path).startswith("iso_"):
      continue
    try:
      with open(path, "rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog
    except (OSError, UnicodeDecodeError, ValueError):
      continue  # a catalog in a legacy encoding
    docs += [catalog[k] for k in sorted(catalog, key=str) if k and isinstance(catalog[k], str)]
  return docs


def gather_corpora(names, limit):
  """-> {name: [str documents]}, skipping (with a note) corpora missing here."""
  corpora = {}
  for name in names:
    if name == "english":
      from hnet.data import corpus
      try:
        docs = [d.decode("utf-8") for d in corpus.embedded_documents("train")]
      except FileNotFoundError as e:
        print(f"skipping english: {e}")
        continue
    elif name == "code":
      paths = sorted(p for d in ("hnet", "tools", "tests") for p in (REPO / d).rglob("*.py"))
      docs = [p.read_text("utf-8") for p in paths]
    elif name in LOCALES:
      docs = _gettext_messages(LOCALES[name])
      if not docs:
        print(f"skipping {name}: no gettext catalogs under /usr/share/locale/{LOCALES[name]}")
        continue
    else:
      raise app.UsageError(f"unknown corpus {name!r}; known: english, code, "
                           + ", ".join(LOCALES))
    corpora[name] = _cap_documents(docs, limit)
  return corpora


def run_reference(python, corpora, repeats):
  with tempfile.TemporaryDirectory() as tmp:
    src, dst = os.path.join(tmp, "in.json"), os.path.join(tmp, "out.json")
    with open(src, "w") as f:
      json.dump(corpora, f)
    proc = subprocess.run([python, "-c", REFERENCE_SCRIPT, src, dst, str(repeats)],
                          capture_output=True, text=True)
    if proc.returncode:
      raise SystemExit(f"the reference splitter failed ({python}); is hat-splitter installed "
                       f"there? (pip install hat-splitter==0.1.10)\n{proc.stderr[-2000:]}")
    with open(dst) as f:
      return json.load(f)


def run_ours(corpora, repeats):
  from hnet.text.splitter import split, split_text
  split_text("é")   # builds the fast patterns (first use, about 0.1 s; not timed, like imports)
  out = {}
  for name, docs in corpora.items():
    encoded = [d.encode("utf-8") for d in docs]
    best_str = best_bytes = float("inf")
    for _ in range(repeats):
      start = time.process_time()
      words = [split_text(doc) for doc in docs]
      best_str = min(best_str, time.process_time() - start)
      start = time.process_time()
      for doc in encoded:
        split(doc)
      best_bytes = min(best_bytes, time.process_time() - start)
    out[name] = {"cpu_s": best_str, "bytes_cpu_s": best_bytes,
                 "lengths": [[len(w) for w in ws] for ws in words]}
  return out


def _cuts(lengths):
  cuts, pos = set(), 0
  for n in lengths[:-1]:
    pos += n
    cuts.add(pos)
  return cuts


def _char_kind(c):
  return f"{c!r} {unicodedata.category(c)}" if c else "(edge)"


def compare(docs, ours, ref, show):
  """-> (stats, [difference lines])."""
  shared = n_ours = n_ref = same_docs = 0
  examples = collections.OrderedDict()   # (char before, char after, side) -> [count, text]
  for doc, lo, lr in zip(docs, ours, ref):
    co, cr = _cuts(lo), _cuts(lr)
    shared += len(co & cr)
    n_ours += len(co)
    n_ref += len(cr)
    same_docs += co == cr
    for pos in sorted(co ^ cr):
      key = (doc[pos - 1], doc[pos], "only ours" if pos in co else "only published")
      if key not in examples:
        a, b = max(0, pos - 12), min(len(doc), pos + 12)
        examples[key] = [0, doc[a:pos] + "|" + doc[pos:b]]
      examples[key][0] += 1
  precision = shared / max(n_ours, 1)
  recall = shared / max(n_ref, 1)
  f1 = 2 * precision * recall / max(precision + recall, 1e-12)
  ranked = sorted(examples.items(), key=lambda kv: -kv[1][0])
  lines = [f"  {count:6d}x cut {side}: {_char_kind(k0)} | {_char_kind(k1)}   e.g. {text!r}"
           for (k0, k1, side), (count, text) in ranked[:show]]
  if len(ranked) > show:
    lines.append(f"  ... and {len(ranked) - show} more kinds "
                 f"({sum(c for _, (c, _) in ranked[show:])} cuts)")
  stats = {"documents": len(docs), "identical_documents": same_docs,
           "cuts_published": n_ref, "cuts_ours": n_ours, "precision": precision,
           "recall": recall, "f1": f1}
  return stats, lines


def side_by_side(reference_python, corpus_names=DEFAULT_CORPORA, bytes_per_corpus=400_000,
                 repeats=3, rounds=2, show=8):
  """-> ({corpus: stats}, [markdown table lines], [difference lines])."""
  corpora = gather_corpora(corpus_names, bytes_per_corpus)
  ref_runs, our_runs = [], []
  for _ in range(max(1, rounds)):
    ref_runs.append(run_reference(reference_python, corpora, repeats))
    our_runs.append(run_ours(corpora, repeats))
  rows, details = {}, []
  table = ["| corpus | MB | docs | F1 | precision | recall | identical docs | published MB/s | "
           "hnet MB/s (str) | ratio | hnet MB/s (bytes) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for name, docs in corpora.items():
    size = sum(len(d.encode("utf-8")) for d in docs)
    stats, lines = compare(docs, our_runs[0][name]["lengths"], ref_runs[0][name]["lengths"],
                           show)
    ref_s = min(r[name]["cpu_s"] for r in ref_runs)
    our_s = min(r[name]["cpu_s"] for r in our_runs)
    our_bytes_s = min(r[name]["bytes_cpu_s"] for r in our_runs)
    stats.update(mb=size / 1e6, published_mb_per_s=size / ref_s / 1e6,
                 ours_mb_per_s=size / our_s / 1e6, ours_bytes_mb_per_s=size / our_bytes_s / 1e6,
                 speed_ratio=ref_s / our_s)
    rows[name] = stats
    table.append(f"| {name} | {size / 1e6:.2f} | {len(docs)} | {stats['f1']:.4f} | "
                 f"{stats['precision']:.4f} | {stats['recall']:.4f} | "
                 f"{stats['identical_documents']}/{len(docs)} | "
                 f"{stats['published_mb_per_s']:.2f} | {stats['ours_mb_per_s']:.2f} | "
                 f"{stats['speed_ratio']:.2f}x | {stats['ours_bytes_mb_per_s']:.2f} |")
    if lines:
      details.append(f"{name}: {stats['cuts_ours'] - stats['cuts_published']:+d} cuts")
      details += lines
  return rows, table, details


def main(argv):
  del argv
  if not FLAGS.reference_python:
    raise app.UsageError("--reference_python is required: the python of a scratch venv with "
                         "hat-splitter installed, e.g. python3 -m venv /tmp/hatsplit && "
                         "/tmp/hatsplit/bin/pip install hat-splitter==0.1.10")
  rows, table, details = side_by_side(FLAGS.reference_python, FLAGS.corpora,
                                      FLAGS.bytes_per_corpus, FLAGS.repeats, FLAGS.rounds,
                                      FLAGS.show)
  print("\n".join(table))
  print("\nRemaining differences (most frequent first; '|' marks the cut):")
  print("\n".join(details) if details else "  none")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  flags.DEFINE_string("reference_python", None, "python of an environment with hat-splitter "
                      "installed (e.g. /tmp/hatsplit/bin/python)")
  flags.DEFINE_integer("bytes_per_corpus", 400_000, "UTF-8 bytes per corpus")
  flags.DEFINE_integer("repeats", 3, "timed passes per round (best is kept)")
  flags.DEFINE_integer("rounds", 2, "rounds of (reference, ours), alternating")
  flags.DEFINE_integer("show", 8, "differences shown per corpus (distinct character pairs)")
  flags.DEFINE_list("corpora", ["english", "code", "de", "ru", "ar", "zh", "ja", "ko"],
                    "corpora to compare")
  flags.DEFINE_string("json", None, "also write the table as JSON here")
  app.run(main)
