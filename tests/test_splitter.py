"""Tests for hnet/text/splitter.py: expected splits, losslessness, length cap and prefix
stability at byte granularity (P1-P3 of the module docstring), generation helpers."""
import codecs

import hypothesis.strategies as st
import pytest
import regex
from hypothesis import example, given, settings

from hnet.text import splitter
from hnet.text.splitter import (WordStream, open_word_start, split, split_text,
                                split_with_open_last, starts_new_word)

# (text, expected words): each as the published splitter (hat-splitter 0.1.10) splits it,
# observed by running it outside the project (see tools/compare_splitter.py).
EXPECTED = [
    ("Hello, world!", ["Hello,", " world!"]),
    ("camelCase and HTTPServer", ["camel", "Case", " and", " HTTPServer"]),
    ("parseHTTPResponse getUserID XMLHttpRequest",
     ["parse", "HTTPResponse", " get", "User", "ID", " XMLHttp", "Request"]),
    ("ÉCOLENormale AAß ABCÀb", ["ÉCOLENormale", " AAß", " ABCÀb"]),
    ("HTTPS x86 3D utf8Decode", ["HTTPS", " x86", " 3D", " utf8Decode"]),
    ("don't", ["don'", "t"]),
    ("3.14 1,000.5", ["3.", "14", " 1,", "000.", "5"]),
    ("https://example.com/", ["https://", "example.", "com/"]),
    ("a  b", ["a", "  ", "b"]),
    ("a\n    b\n\nc", ["a", "\n", "    ", "b", "\n", "\n", "c"]),
    ("  lead", ["  ", "lead"]),
    (" lead", [" lead"]),
    ("end ", ["end", " "]),
    ("tab\tx", ["tab", "\t", "x"]),
    ("a\r\nb", ["a", "\r\n", "b"]),
    ("(hi) [x]", ["(", "hi)", " [", "x]"]),
    ("...!?", ["...!?"]),
    ('"quoted"', ['"', 'quoted"']),
    ("a = b", ["a", " =", " b"]),
    ("x->y", ["x-", ">", "y"]),
    ("snake_case __init__", ["snake_", "case", " __", "init__"]),
    ("你好世界，", ["你", "好", "世", "界，"]),
    ("中文字 日本語", ["中", "文", "字", " 日", "本", "語"]),
    ("カタカナとひらがな", ["カタカナ", "と", "ひ", "ら", "が", "な"]),
    ("データベース ユーザーID", ["データベース", " ユーザー", "ID"]),
    ("한국어 텍스트 표시합니다", ["한국어", " 텍스트", " 표시합니다"]),
    ("abc中def", ["abc", "中", "def"]),
    ("café Ölkanne straßeÄ", ["café", " Ölkanne", " straße", "Ä"]),
    ("Привет, мир", ["Привет,", " мир"]),
    ("مرحبا، بالعالم", ["مرحبا،", " بالعالم"]),
    ("emoji 😀👍", ["emoji", " 😀", "👍"]),
    ("👍🏽 🇩🇪🇫🇷🇫 👨\u200d👩\u200d👧", ["👍🏽", " 🇩🇪", "🇫🇷", "🇫", " 👨\u200d👩\u200d👧"]),
    ("x\xa0y\u3000z", ["x", "\xa0", "y", "\u3000", "z"]),
    ("a\xa0.b", ["a", "\xa0", ".", "b"]),
    ("ΑβΓ aǅ", ["Αβ", "Γ", " aǅ"]),
    ("$5 100%", ["$", "5", " 100%"]),
    ("", []),
]


@pytest.mark.parametrize("text,expected", EXPECTED)
def test_expected_splits(text, expected):
  assert split_text(text) == expected
  assert split(text.encode()) == [w.encode() for w in expected]


def test_lone_surrogates_are_words_and_join_back():
  assert split_text("\ud800") == ["\ud800"]
  assert split_text("a\udfffb \ud83d") == ["a", "\udfff", "b", " ", "\ud83d"]
  assert split_text("\ud800" * 40, max_word_size=4) == ["\ud800"] * 40


def test_long_vowel_mark_does_not_join_latin():
  assert split_text("ユーザーID") == ["ユーザー", "ID"]
  assert split_text("ーID") == ["ー", "ID"]


def test_invalid_bytes_are_single_words():
  assert split(b"ab\xff\xfe cd") == [b"ab", b"\xff", b"\xfe", b" cd"]
  assert split(b"\xed\xa0\x80x") == [b"\xed", b"\xa0", b"\x80", b"x"]  # encoded surrogate
  assert split(b"ab\xe4\xb8X") == [b"ab", b"\xe4", b"\xb8", b"X"]     # truncated, then not
  assert split(b"ab\xe4\xb8") == [b"ab\xe4\xb8"]                      # incomplete tail
  assert split(b"ab\xe4\xb8\xad") == [b"ab", "中".encode()]


def test_cap_with_incomplete_character():
  # "0AÀß" with a 4-byte cap: the cap must not finish "0AÀ" before the incomplete "ß"
  data, size = "0AÀß".encode(), 4
  for k in range(1, len(data) + 1):
    part, full = split(data[:k], size), split(data, size)
    assert part[:-1] == full[:len(part) - 1]
  assert split("AAß".encode()[:3]) == [b"AA\xc3"] and split("AAß".encode()) == ["AAß".encode()]


def test_length_cap():
  assert split(b"a" * 25, max_word_size=10) == [b"a" * 10, b"a" * 10, b"a" * 5]
  word = "é" * 7  # 14 bytes: pieces may not cut a character
  assert split(word.encode(), max_word_size=5) == ["éé".encode()] * 3 + ["é".encode()]
  assert split(b" " * 12, max_word_size=8) == [b" " * 8, b" " * 4]
  with pytest.raises(ValueError):
    split(b"abc", max_word_size=3)


# Text alphabet that exercises every rule: camelCase, acronyms, CJK, kana, Hangul,
# whitespace runs, punctuation, emoji, combining marks, digits, other scripts.
ALPHABET = list("aBcXyZ09 _.,'!?(\n\t\r$+") + ["  ", "\u00a0", "\u3000", "中", "文", "カ", "ひ",
                                                    "ー", "한", "é", "Ä", "ß", "\u0301", "Ж", "ж",
                                                    "😀", "\u200d", "\ufe0f", "🏽", "🇩", "ǅ", "١",
                                                    "\U00010400", "À", "\u202f", "\r\n", "ID",
                                                    "、", "\u2044", "\xad"]
texts = st.lists(st.sampled_from(ALPHABET), max_size=30).map(lambda x: "".join(x).encode())
mixed = st.lists(st.one_of(st.sampled_from(ALPHABET).map(str.encode),
                           st.binary(min_size=1, max_size=2)), max_size=20).map(b"".join)
any_input = st.one_of(st.binary(max_size=40), texts, mixed,
                      st.text(max_size=25).map(lambda t: t.encode("utf-8", "surrogatepass")))
sizes = st.sampled_from([4, 5, 7, 100])


def _pending_tail(data: bytes) -> bytes:
  """Trailing bytes that some continuation turns into one valid UTF-8 character."""
  decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
  decoder.decode(data, final=False)
  tail = decoder.getstate()[0]
  if tail:  # CPython also holds back surrogate prefixes (ED A0): never valid UTF-8
    need = 2 if tail[0] < 0xE0 else 3 if tail[0] < 0xF0 else 4
    rest = need - len(tail) - 1
    if rest < 0 or not any(_decodes(tail + bytes([b]) + b"\x80" * rest) for b in range(0x80, 0xC0)):
      return b""
  return tail


def _last_char_len(word: bytes, tail: bytes) -> int:
  if tail:
    return len(tail)
  return len(word.decode("utf-8", "surrogateescape")[-1].encode("utf-8", "surrogateescape"))


@settings(max_examples=300, deadline=None)
@given(any_input, sizes)
def test_lossless(data, size):
  words = split(data, size)
  assert b"".join(words) == data
  assert all(0 < len(w) <= size for w in words)


# Any str: every code point, lone surrogates included (hypothesis leaves them out unless
# told), and texts from the alphabet above.
any_text = st.one_of(st.text(st.characters(blacklist_categories=()), max_size=40),
                     st.lists(st.sampled_from(ALPHABET), max_size=30).map("".join),
                     st.lists(st.one_of(st.sampled_from(ALPHABET),
                                        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)),
                              max_size=20).map("".join))


@settings(max_examples=400, deadline=None)
@given(any_text, sizes)
def test_split_text_lossless_and_agrees_with_split(text, size):
  words = split_text(text, size)
  assert "".join(words) == text
  assert all(0 < len(w.encode("utf-8", "surrogatepass")) <= size for w in words)
  try:
    data = text.encode("utf-8")
  except UnicodeEncodeError:   # lone surrogates: words by themselves, nothing else changes
    assert all(len(w) == 1 for w in words if regex.search(r"[\ud800-\udfff]", w))
    return
  assert [w.encode() for w in words] == split(data, size)


@settings(max_examples=250, deadline=None)
@given(any_input, sizes)
def test_prefix_stable_at_every_byte(data, size):
  full = split(data, size)
  for k in range(1, len(data) + 1):
    prefix = data[:k]
    part = split(prefix, size)
    n = len(part)
    assert part[:-1] == full[:n - 1]                                # P1
    assert b"".join(full[n - 1:]).startswith(part[-1])              # P2
    tail = _pending_tail(prefix)
    last = _last_char_len(part[-1], tail)
    assert full[n - 1].startswith(part[-1][:len(part[-1]) - last])  # P3
    if not tail:                                                    # strict form
      assert full[n - 1].startswith(part[-1]), (prefix, part, full)


@settings(max_examples=150, deadline=None)
@given(any_input)
@example(b"\xed\xa0")          # a surrogate prefix: CPython's decoder holds it back
@example(b"ab\xed\xa0")
def test_pending_tail_is_a_valid_prefix(data):
  """Bytes held open by rule 7 can still become one valid character."""
  tail = _pending_tail(data)
  assert len(tail) <= 3
  if tail:
    need = 2 if tail[0] < 0xE0 else 3 if tail[0] < 0xF0 else 4
    completions = [tail + bytes([b]) + b"\x80" * (need - len(tail) - 1) for b in range(0x80, 0xC0)]
    valid = [c for c in completions if len(c) == need and _decodes(c)]
    assert valid, tail
    assert split(data)[-1].endswith(tail)


def _decodes(data: bytes) -> bool:
  try:
    data.decode("utf-8")
    return True
  except UnicodeDecodeError:
    return False


@settings(max_examples=200, deadline=None)
@given(any_input, sizes)
def test_generation_helpers_agree_with_split(data, size):
  full = split(data, size)
  starts = {sum(map(len, full[:i])) for i in range(len(full))}  # word starts of the full split
  stream = WordStream(size)
  for k in range(len(data)):
    prefix = data[:k]
    new = starts_new_word(prefix, data[k], size)
    finished, open_word = split_with_open_last(data[:k + 1], size)
    begin = open_word_start(data[:k + 1], size)
    assert begin == k + 1 - len(open_word)
    # a new word starts iff the open word's start moves on (the first byte always starts one)
    assert new == (k == 0 or begin > open_word_start(prefix, size))
    if new:
      # the finished words are final, and the new open word starts at a real boundary,
      # at most the rest of a multi-byte character before the new byte (P3)
      assert begin in starts and k - 3 <= begin <= k
    elif k in starts and k > 0:
      # a boundary at k that is not reported now is reported once k's character is
      # complete (the only P3 case)
      assert _pending_tail(data[:k + 1]), (data, k)
    before = len(stream.finished)
    assert stream.push(data[k]) == finished[before:]
    assert stream.finished == finished
    assert stream.open_word == open_word
  assert stream.finished + ([stream.open_word] if data else []) == full


def test_word_stream_reports_finished_words():
  stream = WordStream()
  out = [stream.push(b) for b in b"Hi there! x"]
  assert out[2] == [b"Hi"]  # the space finishes "Hi"
  assert out[8] == []       # "!" attaches to " there"
  assert out[9] == [b" there!"]
  assert stream.finished == [b"Hi", b" there!"] and stream.open_word == b" x"


def test_throughput_reports_words_of_split():
  text = "All's well that ends well; camelCase 中文.\n".encode() * 200
  result = splitter.splitter_throughput(text, repeats=1)
  # "All'" "s" " well" " that" " ends" " well;" " camel" "Case" " 中" "文." "\n"
  assert result["num_words"] == len(split(text)) == 11 * 200
  assert result["bytes_per_word"] == pytest.approx(len(text) / (11 * 200))
  assert result["mb_per_s"] > 0


def test_surrogate_prefix_is_not_held_open():
  """ED A0.. starts a UTF-16 surrogate, never valid UTF-8: its bytes are invalid bytes
  at once, so splitting a longer input keeps the same words (strict prefix form)."""
  assert split(b"ab\xed\xa0") == [b"ab", b"\xed", b"\xa0"]
  assert split(b"ab\xed\xa0\x80")[:3] == split(b"ab\xed\xa0")
  assert split(b"ab\xe2\x82") == [b"ab\xe2\x82"]  # a real incomplete character stays open


def _bmp_and_ascii_patterns():
  patterns = splitter._fast_patterns()
  return patterns["bmp"], patterns["ascii_bytes"]


def test_fast_patterns_equal_the_definition_on_every_bmp_code_point():
  """The `re` patterns with explicit sets (used for text without code points above
  U+FFFF, and for ASCII bytes) give WORD_PATTERN's words: every BMP code point, in
  contexts that exercise each rule (after a lower-case letter and before an upper-case
  one, after a single space and before punctuation, after punctuation, repeated, after
  Katakana and before a mark, ZWJ and a pictograph)."""
  bmp, ascii_bytes = _bmp_and_ascii_patterns()
  chars = "".join(map(chr, range(0x10000)))
  contexts = ["a{}B", " {}.", ".{}x", "{}{}", "カ{}\u0301\u200d\u2764"]
  for context in contexts:
    for i in range(0, len(chars), 4096):
      text = "|".join(context.replace("{}", c) for c in chars[i:i + 4096])
      assert bmp.findall(text) == splitter.WORD_PATTERN.findall(text), (context, i)
  ascii_chars = [chr(c) for c in range(128)]
  text = "|".join(a + b + c for a in ascii_chars for b in ascii_chars for c in "aB. \n")
  assert ascii_bytes.findall(text.encode()) == [w.encode() for w in
                                                splitter.WORD_PATTERN.findall(text)]


@settings(max_examples=300, deadline=None)
@given(st.one_of(any_text, st.text(st.characters(max_codepoint=0xFFFF, blacklist_categories=()),
                                   max_size=40)))
def test_fast_patterns_equal_the_definition(text):
  bmp, ascii_bytes = _bmp_and_ascii_patterns()
  bmp_text = "".join(c for c in text if c <= "\uffff")
  assert bmp.findall(bmp_text) == splitter.WORD_PATTERN.findall(bmp_text)
  ascii_text = "".join(c for c in text if c.isascii())
  assert (ascii_bytes.findall(ascii_text.encode())
          == [w.encode() for w in splitter.WORD_PATTERN.findall(ascii_text)])
  assert splitter.find_words(text) == splitter.WORD_PATTERN.findall(text)
