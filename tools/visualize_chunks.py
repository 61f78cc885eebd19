"""Show where an H-Net puts its chunk boundaries, per stage, as HTML and PNG.

  python tools/visualize_chunks.py --workdir=runs/hnet_1stage_tiny --text="To be, or not to be" \
      --out=chunks            # writes chunks.html and chunks.png
  python tools/visualize_chunks.py --config=configs/hnet_1stage_tiny.py --text=...   # fresh init
  python tools/visualize_chunks.py --workdir=runs/default --held_out_bytes=16000 --out=held_out
      # the first 16,000 bytes of the run's held-out split (its documents joined by
      # newlines): statistics over all of them, pictures of the first --show_bytes

Also prints, per stage, how many boundaries fall at word starts vs the base rate of word
starts among the bytes (`word_start_stats`). A word start is a byte at position t >= 1
that is an ASCII letter or digit, or the lead byte of a multi-byte UTF-8 character
(>= 0xC0), and whose previous byte is ASCII whitespace or ASCII punctuation. The BOS
(always a boundary) is not shown, and the first text byte is excluded from the counts.
A boundary is *word-aligned* when it is a word start or the separator byte right before
one: a chunk " quick" (leading space, as in GPT-2's tokens) starts a word as much as
"quick" does. Both figures are printed, each with its base rate.
"""
from __future__ import annotations

import argparse
import html
import importlib.util
import os
import string
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STAGE_COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]
_SEPARATORS = frozenset((string.whitespace + string.punctuation).encode())
_WORD_BYTES = frozenset((string.ascii_letters + string.digits).encode())


def word_starts(data: bytes) -> np.ndarray:
  """[len(data)] bool: the word starts of `data` (see the module docstring)."""
  out = np.zeros(len(data), bool)
  for t in range(1, len(data)):
    current = data[t]
    out[t] = (current in _WORD_BYTES or current >= 0xC0) and data[t - 1] in _SEPARATORS
  return out


def word_start_stats(data: bytes, boundary_mask: np.ndarray) -> dict[str, float]:
  """Boundaries [len(data)] over the bytes of `data` -> fractions (position 0 excluded).

  boundary_word_start_fraction:   boundaries that are word starts / boundaries
  base_rate:                      word starts / bytes (what a random placement gives)
  word_start_recall:              word starts that are boundaries / word starts
  boundary_word_aligned_fraction: boundaries that are word-aligned / boundaries
  aligned_base_rate:              word-aligned bytes / bytes
  word_aligned_recall:            words whose start or the byte before it is a boundary
                                  / words
  """
  all_starts = word_starts(data)
  before = np.zeros_like(all_starts)
  before[:-1] = all_starts[1:]  # the separator byte right before a word start
  starts, aligned = all_starts[1:], (all_starts | before)[1:]
  mask = np.asarray(boundary_mask, bool)[:len(data)]
  words_found = (mask & all_starts) | np.concatenate([[False], (mask & before)[:-1]])
  mask = mask[1:]
  boundaries = max(int(mask.sum()), 1)
  return {"boundary_word_start_fraction": float((mask & starts).sum()) / boundaries,
          "base_rate": float(starts.mean()) if starts.size else 0.0,
          "word_start_recall": float((mask & starts).sum()) / max(int(starts.sum()), 1),
          "boundary_word_aligned_fraction": float((mask & aligned).sum()) / boundaries,
          "aligned_base_rate": float(aligned.mean()) if aligned.size else 0.0,
          "word_aligned_recall": float(words_found[1:].sum()) / max(int(starts.sum()), 1),
          "bytes_per_chunk": float(len(mask)) / boundaries}


def held_out_text(config, num_bytes: int) -> bytes:
  """The first `num_bytes` bytes of the run's held-out documents, joined by newlines."""
  from hnet.eval.robustness import held_out_documents
  return b"\n".join(held_out_documents(config, max_bytes=num_bytes))[:num_bytes]


def load_params(workdir: str, step: int | None = None):
  """(model, config, step) of the newest readable checkpoint in a run directory."""
  from hnet.runs import load_model
  return load_model(workdir, step)


def fresh_model(config_path: str, seed: int = 0):
  """(model, config, 0) freshly initialised from a config file."""
  from flax import nnx
  from hnet.models import build_model
  spec = importlib.util.spec_from_file_location("experiment_config", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  return build_model(config.model, nnx.Rngs(seed)), config, 0


def chunk_boundaries(model, text: str | bytes) -> tuple[bytes, list[dict[str, np.ndarray]]]:
  """Runs `text` (after a BOS) through the model -> (bytes, per stage {boundary_prob,
  boundary_mask} [len(bytes)] at the byte each stage-s chunk starts)."""
  import jax.numpy as jnp
  from flax import nnx
  from hnet import bytes as hbytes
  data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
  ids = hbytes.encode(data, add_bos=True)[None]  # [1, L + 1]
  L = ids.shape[1]
  batch = {"inputs": jnp.asarray(ids), "segment_ids": jnp.ones((1, L), jnp.int32),
           "positions": jnp.arange(L, dtype=jnp.int32)[None]}
  stages = nnx.jit(lambda m, b: m.chunking(b))(model, batch)
  # drop the BOS (always a boundary): entry t of each array describes data[t]
  out = [{k: np.asarray(v[0, 1:]) for k, v in stage.items()} for stage in stages]
  return data, out


def _char_cells(data: bytes) -> list[str]:
  """One printable cell per byte (multi-byte characters on their lead byte)."""
  text = data.decode("utf-8", errors="replace")
  cells, pos = [], 0
  for ch in text:
    width = len(ch.encode("utf-8")) if ch != "\ufffd" else 1
    cells.append(ch)
    cells.extend([""] * (width - 1))
    pos += width
  return (cells + [""] * len(data))[:len(data)]


def write_html(path: str, data: bytes, stages: list[dict[str, np.ndarray]], title: str = "") -> None:
  """One line per stage: chunks shaded alternately, boundaries marked in the stage colour."""
  cells = _char_cells(data)
  rows = []
  for s, stage in enumerate(stages):
    color = STAGE_COLORS[s % len(STAGE_COLORS)]
    spans, parity = [], 1
    for t, cell in enumerate(cells):
      boundary = bool(stage["boundary_mask"][t])
      parity ^= int(boundary)
      shade = "#f3f3f3" if parity else "#ffffff"
      border = f"border-left:2px solid {color};" if boundary else ""
      shown = {"\n": "&#8629;", " ": "&nbsp;", "": ""}.get(cell, html.escape(cell))
      tip = f"byte {t} p={stage['boundary_prob'][t]:.2f}"
      spans.append(f'<span style="background:{shade};{border}" title="{tip}">{shown}</span>')
    rows.append(f'<div><b style="color:{color}">stage {s}</b> '
                f'({int(stage["boundary_mask"].sum())} chunks)</div>'
                f'<div style="font-family:monospace;line-height:1.8;word-wrap:break-word">'
                f'{"".join(spans)}</div>')
  body = "\n".join(rows)
  with open(path, "w", encoding="utf-8") as f:
    f.write(f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<h3>{html.escape(title)}</h3>\n{body}\n")


def write_png(path: str, data: bytes, stages: list[dict[str, np.ndarray]], width: int = 64,
              title: str = "") -> None:
  """Text on a grid, a coloured tick left of each byte that starts a chunk (per stage)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cells = _char_cells(data)
  lines = max(1, -(-len(cells) // width))
  fig, ax = plt.subplots(figsize=(width * 0.16 + 1, lines * 0.45 + 0.8))
  for t, cell in enumerate(cells):
    x, y = t % width, -(t // width)
    shown = {"\n": "\u21b5", " ": "\u00b7"}.get(cell, cell)
    ax.text(x + 0.5, y, shown, ha="center", va="center", family="monospace", fontsize=9)
    for s, stage in enumerate(stages):
      if stage["boundary_mask"][t]:
        height = 0.25 + 0.12 * s
        ax.plot([x, x], [y - height, y + height], color=STAGE_COLORS[s % len(STAGE_COLORS)],
                lw=1.0 + s)
  for s in range(len(stages)):
    ax.plot([], [], color=STAGE_COLORS[s % len(STAGE_COLORS)], lw=1.0 + s, label=f"stage {s}")
  ax.legend(loc="upper right", fontsize=7, bbox_to_anchor=(1.0, 1.15), ncol=len(stages))
  ax.set_xlim(-0.5, width + 0.5)
  ax.set_ylim(-lines + 0.3, 0.7)
  ax.axis("off")
  if title:
    ax.set_title(title, fontsize=9, loc="left")
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="run directory (config.json + checkpoints/)")
  source.add_argument("--config", help="config file: visualise a freshly initialised model")
  parser.add_argument("--step", type=int, default=None)
  parser.add_argument("--text", default=None)
  parser.add_argument("--text_file", default=None)
  parser.add_argument("--held_out_bytes", type=int, default=0,
                      help="use the first N bytes of the run's held-out split as the text")
  parser.add_argument("--show_bytes", type=int, default=2048,
                      help="bytes drawn in the HTML/PNG (statistics use the whole text)")
  parser.add_argument("--out", default="chunks", help="writes OUT.html and OUT.png")
  parser.add_argument("--width", type=int, default=64, help="bytes per line in the PNG")
  args = parser.parse_args(argv)
  if args.workdir:
    model, config, step = load_params(args.workdir, args.step)
    title = f"{args.workdir} step {step}"
  else:
    model, config, step = fresh_model(args.config)
    title = f"{args.config} (fresh init)"
  if not hasattr(model, "chunking"):
    raise ValueError(f"{args.workdir or args.config} is a {config.model.name!r} model, which has "
                     "no chunk boundaries to show: give an H-Net run (model.name 'hnet').")
  if args.held_out_bytes > 0:
    text = held_out_text(config, args.held_out_bytes)
  elif args.text_file:
    with open(args.text_file, "rb") as f:
      text = f.read()
  else:
    text = args.text or "The quick brown fox jumps over the lazy dog.\nTo be, or not to be."
  data, stages = chunk_boundaries(model, text)
  shown = [{k: v[:args.show_bytes] for k, v in stage.items()} for stage in stages]
  write_html(args.out + ".html", data[:args.show_bytes], shown, title)
  write_png(args.out + ".png", data[:args.show_bytes], shown, args.width, title)
  print(f"{len(data)} bytes")
  for s, stage in enumerate(stages):
    stats = word_start_stats(data, stage["boundary_mask"])
    print(f"stage {s}: " + ", ".join(f"{k}={v:.3f}" for k, v in stats.items()))
  print(f"wrote {args.out}.html and {args.out}.png")


if __name__ == "__main__":
  from hnet import cli
  cli.report(main)
