"""The promises of hnet/eval/noise.py: kept letters, exact levels, determinism, any bytes."""
import importlib.resources
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hnet.eval import noise
from hnet.eval.noise import NOISES

ENGLISH = ("The government received their message because it was necessary to begin "
           "the experiment before the committee could publish its independent report. "
           "Different people believe different things about the environment and science, "
           "and the definitely separate occurrence was recommended by the professor.")
MULTI = ("Привет, как поживаете сегодня? Καλημέρα κόσμε, τι κάνετε; 你好世界，今天天气很好。"
         "हिन्दी भाषा Hello wonderful world. ÉTÉ naïve déjà-vu")
IN_WORD = ("swap", "replace", "delete", "hat_mix")


def test_registry_names_and_docstrings():
  expected = {"swap", "replace", "delete", "hat_mix", "all_caps", "antspeak", "char_drop",
              "random_case", "char_repeat", "upper_case", "codespell_typos", "keyboard"}
  assert set(NOISES) == expected
  for name, fn in NOISES.items():
    assert "level" in fn.__doc__, name


@pytest.mark.parametrize("name", sorted(NOISES))
def test_deterministic_and_seed_sensitive(name):
  fn = NOISES[name]
  text = ENGLISH + " " + MULTI
  assert fn(text, 0.5, 3) == fn(text, 0.5, np.random.default_rng(3))
  assert noise.apply_noise(name, text, 0.5, seed=3) == fn(text, 0.5, 3)
  outputs = {fn(text, 0.5, seed) for seed in range(4)}
  assert len(outputs) > 1, "different seeds should give different noise"
  assert fn(text, 0.5, 0) != text


@pytest.mark.parametrize("name", sorted(NOISES))
def test_empty_level_zero_and_bad_level(name):
  fn = NOISES[name]
  assert fn("", 0.7, 0) == ""
  assert fn(b"", 0.7, 0) == b""
  assert fn(ENGLISH, 0.0, 0) == ENGLISH
  assert fn(ENGLISH.encode(), 0.0, 0) == ENGLISH.encode()
  with pytest.raises(ValueError):
    fn(ENGLISH, 1.5, 0)


@pytest.mark.parametrize("name", sorted(NOISES))
@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=200), level=st.floats(0.0, 1.0), seed=st.integers(0, 2**31))
def test_any_bytes(name, data, level, seed):
  # 0xFE / 0xFF never occur in UTF-8, so they are always escaped invalid bytes.
  data = data + b" abcd\xff\xfe efgh \xc3"
  out = NOISES[name](data, level, seed)
  assert isinstance(out, bytes)
  assert out.count(b"\xff") == data.count(b"\xff")
  assert out.count(b"\xfe") == data.count(b"\xfe")


@pytest.mark.parametrize("name", sorted(NOISES))
@settings(max_examples=30, deadline=None)
@given(text=st.text(max_size=120), level=st.floats(0.0, 1.0))
def test_any_str(name, text, level):
  out = NOISES[name](text, level, 0)
  assert isinstance(out, str)
  out.encode("utf-8")  # no lone surrogates invented


def _first_last(text):
  out = []
  for start, end in noise.words(text):
    letters = [ch for ch in text[start:end] if ch.isalpha()]
    out.append((letters[0], letters[-1]) if letters else None)
  return out


@pytest.mark.parametrize("name", IN_WORD)
@pytest.mark.parametrize("level", [0.1, 0.5, 1.0])
def test_first_and_last_letters_kept(name, level):
  for text in (ENGLISH, MULTI):
    out = NOISES[name](text, level, 11)
    assert out != text
    assert _first_last(out) == _first_last(text)


@pytest.mark.parametrize("name", IN_WORD)
@settings(max_examples=40, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("abcdeXYZ жщЖЯ αβΩ 漢字 ,.'-\n"), max_size=80),
       level=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_first_and_last_letters_kept_property(name, text, level, seed):
  out = NOISES[name](text, level, seed)
  assert _first_last(out) == _first_last(text)


def _distinct_letter_words(n_words, rng):
  letters = list("abcdefghijklmnopqrstuvwxyz")
  words = []
  for _ in range(n_words):
    length = int(rng.integers(2, 12))
    words.append("".join(rng.permutation(letters)[:length]))
  return " ".join(words) + "."


def _k(level, n):
  return int(np.floor(level * n + 0.5))


@pytest.mark.parametrize("level", [0.1, 0.23, 0.37, 1.0])
def test_exact_levels_letter_noises(level):
  rng = np.random.default_rng(0)
  text = _distinct_letter_words(40, rng)
  interiors = noise.interior_letters(text)
  n_interior = sum(len(w) for w in interiors)
  n_slots = sum(len(w) // 2 for w in interiors)

  out = noise.replace(text, level, 1)
  assert sum(a != b for a, b in zip(out, text)) == _k(level, n_interior)
  out = noise.delete(text, level, 1)
  assert len(text) - len(out) == _k(level, n_interior)
  out = noise.swap(text, level, 1)  # distinct letters: each swap moves exactly 2
  assert sum(a != b for a, b in zip(out, text)) == 2 * _k(level, n_slots)
  out = noise.keyboard(text, level, 1)
  n_ascii = sum(ch.isalpha() for ch in text)
  assert sum(a != b for a, b in zip(out, text)) == _k(level, n_ascii)
  out = noise.random_case(text, level, 1)
  assert sum(a != b for a, b in zip(out, text)) == _k(level, n_ascii)
  out = noise.upper_case(text, level, 1)
  assert sum(ch.isupper() for ch in out) == _k(level, n_ascii)


@pytest.mark.parametrize("level", [0.1, 0.23, 0.37, 1.0])
def test_exact_levels_word_and_char_noises(level):
  rng = np.random.default_rng(1)
  text = _distinct_letter_words(50, rng)
  tokens = text.split(" ")
  out = noise.all_caps(text, level, 2)
  assert sum(a != b for a, b in zip(out.split(" "), tokens)) == _k(level, len(tokens))
  out = noise.antspeak(text, level, 2)
  n_long = sum(len(t) >= 2 for t in tokens)
  pieces, at, changed = out.split(" "), 0, 0
  for token in tokens:  # each token is either kept or spelled out letter by letter
    if pieces[at] == token:
      at += 1
    else:
      assert pieces[at:at + len(token)] == list(token)
      at, changed = at + len(token), changed + 1
  assert at == len(pieces)
  assert changed == _k(level, n_long)

  n_chars = sum(not ch.isspace() for ch in text)
  out = noise.char_drop(text, level, 2)
  assert len(text) - len(out) == _k(level, n_chars)
  out = noise.char_repeat(text, level, 2)  # no doubled letters in the input
  runs = [1]
  for a, b in zip(out, out[1:]):
    runs[-1:] = [runs[-1] + 1] if a == b else [runs[-1], 1]
  assert sum(r > 1 for r in runs) == _k(level, n_chars)
  assert all(r <= 4 for r in runs)


def _dictionary_entries():
  path = importlib.resources.files("codespell_lib") / "data" / "dictionary.txt"
  entries = {}
  for line in path.read_text(encoding="utf-8").splitlines():
    typo, _, fixes = line.partition("->")
    entries[typo.strip().lower()] = {f.strip().lower() for f in fixes.split(",")}
  return entries


@pytest.mark.parametrize("level", [0.25, 1.0])
def test_codespell_typos_are_real_entries(level):
  entries = _dictionary_entries()
  text_words = ENGLISH.split(" ")
  eligible = [w for w in noise.words(ENGLISH)
              if ENGLISH[w[0]:w[1]].lower() in noise.codespell_typo_map()]
  assert len(eligible) >= 10
  out = noise.codespell_typos(ENGLISH, level, 5)
  changed = 0
  for before, after in zip(text_words, out.split(" ")):
    if before == after:
      continue
    changed += 1
    core_before, core_after = before.strip(".,"), after.strip(".,")
    assert core_after.lower() in entries, core_after
    assert core_before.lower() in entries[core_after.lower()]
    assert core_after[0].isupper() == core_before[0].isupper()
  assert changed == _k(level, len(eligible))
  assert noise.codespell_typos("GOVERNMENT", 1.0, 0).isupper()


def test_non_latin_scripts():
  greek, cyrillic = "Καλημέρα κόσμε αγαπητοί φίλοι", "Привет дорогие друзья сегодня"
  for text, script in ((greek, "GREEK"), (cyrillic, "CYRILLIC")):
    out = noise.replace(text, 1.0, 0)
    assert out != text and len(out) == len(text)
    for a, b in zip(text, out):
      if a != b:
        assert unicodedata.name(b).startswith(script)
        assert b.islower() == a.islower()
  cjk = "你好世界今天天气很好"
  for name in IN_WORD:  # every ideograph is its own word: no interior letters
    assert NOISES[name](cjk, 1.0, 0) == cjk
  assert len(noise.char_drop(cjk, 0.5, 0)) == len(cjk) - 5
  assert noise.antspeak("天气 很好", 1.0, 0) == "天 气 很 好"


def test_bytes_same_as_str_on_valid_utf8():
  for name, fn in NOISES.items():
    assert fn(MULTI.encode(), 0.3, 9) == fn(MULTI, 0.3, 9).encode(), name
