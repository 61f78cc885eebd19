"""Tokenizer files of an export, for the fast `tokenizers` library (no remote code).

Byte models (data layouts "bytes", "words", "span_corruption"): ids 0..255 are the
bytes, then the specials of hnet/bytes.py: <pad> 256, <bos> 257, <eos> 258, and
259..263 (ByT5's span sentinels, `<extra_id_j>` = 259 + j; unused by the other byte
models). The tokenizer is a BPE model without merges over the ByteLevel alphabet
(hnet/data/bpe.py byte_to_char: byte b <-> one printable character), after the
ByteLevel pre-tokenizer without its regex split, so a text becomes exactly its UTF-8
bytes: `tokenizer(text, add_special_tokens=False).input_ids == hnet.bytes.encode(text)`.
Specials written inside a text ("<eos>") stay bytes (`split_special_tokens`), as in
hnet.bytes. With add_special_tokens (the default) the post-processor adds what the
training rows had: <bos> first for decoder-only models (hnet.bytes.encode(text,
add_bos=True)), <eos> last for a span-corruption encoder (its sources end with EOS), and
nothing for a prefix-LM encoder. Decoding maps ids back to bytes and the bytes to text
with invalid UTF-8 replaced by U+FFFD, as hnet.bytes.decode does. transformers
tokenizers take `str`; for raw bytes (invalid UTF-8 included) the ids are the bytes
themselves: `list(data)`.

BPE runs (layout "bpe") export the tokenizer the run trained (<workdir>/bpe_tokenizer.json,
hnet/data/bpe.py) with a post-processor that adds <|bos|>.
"""
from __future__ import annotations

import dataclasses
import json
import os

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from hnet import bytes as hbytes
from hnet.export.family import ExportError

BYTE_SPECIALS = ("<pad>", "<bos>", "<eos>") + tuple(f"<extra_id_{j}>" for j in range(5))  # ids 256..263


@dataclasses.dataclass
class TokenizerSpec:
  files: dict[str, str]          # file name -> content
  pad_id: int
  bos_id: int
  eos_id: int
  suppress_ids: list[int]        # ids greedy decoding never emits (as hnet/generate.py)


def _tokenizer_config(bos: str, eos: str, pad: str, max_length: int) -> str:
  return json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos,
                     "eos_token": eos, "pad_token": pad, "split_special_tokens": True,
                     "clean_up_tokenization_spaces": False, "model_max_length": max_length},
                    indent=2, sort_keys=True) + "\n"


def _special_tokens_map(bos: str, eos: str, pad: str) -> str:
  return json.dumps({"bos_token": bos, "eos_token": eos, "pad_token": pad}, indent=2) + "\n"


def byte_tokenizer(*, add_bos: bool, add_eos: bool) -> Tokenizer:
  """The byte tokenizer of the module docstring."""
  from hnet.data.bpe import byte_to_char  # the ByteLevel alphabet, defined once
  vocab = {char: byte for byte, char in enumerate(byte_to_char())}
  tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in BYTE_SPECIALS])
  assert tokenizer.token_to_id("<pad>") == hbytes.PAD_ID and tokenizer.get_vocab_size() == hbytes.VOCAB_SIZE
  template = ("<bos> " if add_bos else "") + "$A" + (" <eos>" if add_eos else "")
  specials = ([("<bos>", hbytes.BOS_ID)] if add_bos else []) + ([("<eos>", hbytes.EOS_ID)] if add_eos else [])
  if specials:
    tokenizer.post_processor = processors.TemplateProcessing(single=template, special_tokens=specials)
  tokenizer.encode_special_tokens = True
  return tokenizer


def byte_spec(*, add_bos: bool, add_eos: bool, max_length: int, sentinels: bool) -> TokenizerSpec:
  tokenizer = byte_tokenizer(add_bos=add_bos, add_eos=add_eos)
  unused = [] if sentinels else list(range(hbytes.EOS_ID + 1, hbytes.VOCAB_SIZE))
  return TokenizerSpec(
      files={"tokenizer.json": tokenizer.to_str(pretty=True),
             "tokenizer_config.json": _tokenizer_config("<bos>", "<eos>", "<pad>", max_length),
             "special_tokens_map.json": _special_tokens_map("<bos>", "<eos>", "<pad>")},
      pad_id=hbytes.PAD_ID, bos_id=hbytes.BOS_ID, eos_id=hbytes.EOS_ID,
      suppress_ids=[hbytes.PAD_ID, hbytes.BOS_ID] + unused)


def bpe_spec(path: str, *, max_length: int, padded_vocab_size: int) -> TokenizerSpec:
  from hnet.data import bpe
  if not os.path.exists(path):
    raise ExportError(f"the run's BPE tokenizer {path} is missing: a BPE run keeps it in its "
                      f"workdir as {bpe.TOKENIZER_FILE}; copy it back there.")
  trained = bpe.BPETokenizer.load(path)
  tokenizer = trained.tokenizer
  tokenizer.post_processor = processors.TemplateProcessing(
      single=f"{bpe.BOS_TOKEN} $A", special_tokens=[(bpe.BOS_TOKEN, bpe.BOS_ID)])
  tokenizer.encode_special_tokens = True
  unused = list(range(trained.vocab_size, padded_vocab_size))
  return TokenizerSpec(
      files={"tokenizer.json": tokenizer.to_str(pretty=True),
             "tokenizer_config.json": _tokenizer_config(bpe.BOS_TOKEN, bpe.EOS_TOKEN, bpe.PAD_TOKEN,
                                                        max_length),
             "special_tokens_map.json": _special_tokens_map(bpe.BOS_TOKEN, bpe.EOS_TOKEN, bpe.PAD_TOKEN)},
      pad_id=bpe.PAD_ID, bos_id=bpe.BOS_ID, eos_id=bpe.EOS_ID,
      suppress_ids=[bpe.PAD_ID, bpe.BOS_ID] + unused)


def spec_for_run(config, workdir: str) -> TokenizerSpec:
  """The tokenizer a run was trained with, by its data layout."""
  layout = config.data.get("layout", "bytes")
  max_length = int(config.data.seq_len)
  if layout == "bpe":
    from hnet.data import bpe
    path = config.data.get("bpe_tokenizer", "") or ""
    if not path or not os.path.exists(path):
      path = os.path.join(workdir, bpe.TOKENIZER_FILE)  # the run directory may have moved
    return bpe_spec(path, max_length=max_length, padded_vocab_size=int(config.model.vocab_size))
  if layout == "span_corruption":
    objective = config.data.get("objective", "span_corruption")
    return byte_spec(add_bos=False, add_eos=objective == "span_corruption", max_length=max_length,
                     sentinels=objective == "span_corruption")
  if layout in ("bytes", "words"):
    return byte_spec(add_bos=True, add_eos=False, max_length=max_length, sentinels=False)
  raise ExportError(f"no tokenizer export for data.layout {layout!r}")
