"""tools/visualize_chunks.py: the word-start statistics the H-Net issue is judged by."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
import visualize_chunks as vc  # noqa: E402  pylint: disable=g-import-not-at-top


def _mask(data: bytes, positions) -> np.ndarray:
  mask = np.zeros(len(data), bool)
  mask[list(positions)] = True
  return mask


def test_word_starts_and_aligned_boundaries():
  data = b"ab cd, ef"
  np.testing.assert_array_equal(np.flatnonzero(vc.word_starts(data)), [3, 7])
  on_letters = vc.word_start_stats(data, _mask(data, [0, 3, 7]))
  assert on_letters["boundary_word_start_fraction"] == 1.0
  assert on_letters["boundary_word_aligned_fraction"] == 1.0
  assert on_letters["word_start_recall"] == on_letters["word_aligned_recall"] == 1.0
  # boundaries on the separator before each word: aligned, but not word starts
  on_spaces = vc.word_start_stats(data, _mask(data, [0, 2, 6]))
  assert on_spaces["boundary_word_start_fraction"] == 0.0
  assert on_spaces["boundary_word_aligned_fraction"] == 1.0
  assert on_spaces["word_aligned_recall"] == 1.0
  # mid-word boundaries are neither
  inside = vc.word_start_stats(data, _mask(data, [0, 1, 4, 8]))
  assert inside["boundary_word_aligned_fraction"] == 0.0
  assert inside["word_aligned_recall"] == 0.0
  np.testing.assert_allclose(inside["aligned_base_rate"], 4 / 8)  # bytes 2, 3, 6, 7 of 1..8
  np.testing.assert_allclose(inside["bytes_per_chunk"], 8 / 3)


def test_cli_held_out_statistics_and_pictures(tmp_path, capsys):
  """--held_out_bytes: statistics over N held-out bytes, pictures of the first --show_bytes."""
  config = tmp_path / "tiny.py"
  config.write_text(
      "from configs import hnet_1stage_tiny\n"
      "def get_config():\n"
      "  c = hnet_1stage_tiny.get_config()\n"
      "  m = c.model\n"
      "  m.layout, m.d_model, m.num_heads, m.mlp_dim = '[m1, T1, m1]', [32, 48], [2, 4], [0, 64]\n"
      "  m.d_state, m.headdim, m.ssd_chunk_size = 8, 16, 8\n"
      "  return c\n")
  sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
  out = tmp_path / "chunks"
  vc.main([f"--config={config}", "--held_out_bytes=1500", "--show_bytes=300", f"--out={out}"])
  printed = capsys.readouterr().out
  assert "1500 bytes" in printed and "boundary_word_aligned_fraction=" in printed
  html = (tmp_path / "chunks.html").read_text()
  assert html.count("<span") == 300  # one cell per shown byte (one stage)
  assert (tmp_path / "chunks.png").stat().st_size > 1000


def test_a_model_without_chunks_is_a_clear_error(tmp_path):
  import pytest
  sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
  with pytest.raises(ValueError, match="'transformer' model, which has no chunk boundaries"):
    vc.main(["--config=configs/transformer_tiny.py", f"--out={tmp_path / 'chunks'}"])
