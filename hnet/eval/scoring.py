"""Log-probabilities and bits per byte from any trained model, for evaluation tools.

  logprob_fn = make_logprob_fn(model, config)       # a tasks.LogprobFn
  logprob_fn(contexts: list[bytes], continuations: list[bytes]) -> np.ndarray [n] float64
      summed log p(continuation | context) in nats
  bpb = bpb_on_documents(model, config, documents)  # held-out bits per byte

`model` is what hnet.runs.load_model returns (an nnx.Module on one device) and `config`
its run config. How a family is read depends on its data layout (config.data.layout):

* "bytes" (transformer, hnet) and "words" (hat, lyt, byte2word; any family whose logits
  [B, L, V] are aligned with the layout's byte `targets`): the pair becomes ONE document
  context + continuation, laid out by the family's own layout
  (hnet.data.pipeline.LAYOUTS) with config.data.seq_len and seed None, exactly as the
  eval split is laid out in training. In both layouts `positions[t]` is the stream index
  of input t (BOS = 0), so target t is document byte positions[t] (EOS at n). The
  continuation's targets are those with byte index in [len(context), n). The document
  must lie in row 0: the context is cut from the left (whole bytes) until
  len(context + continuation) <= seq_len and the layout puts every continuation target
  in its first row (the words layout may also run out of word slots). The model then
  sees BOS + the context's last bytes, as for a document that starts there.
* "bpe" (the BPE baseline): context and continuation are tokenised SEPARATELY and
  concatenated, BOS + tokens(context) + tokens(continuation), and only the
  continuation's tokens are scored. So no token straddles the context/continuation
  boundary and the score is log p of exactly the continuation's bytes (their
  tokenisation is the canonical one of the continuation alone, which can differ from
  how the joint text would tokenise at the seam: the standard choice of
  lm-evaluation-harness). Over seq_len tokens the context is cut from the left by
  whole tokens.
* "span_corruption" (mrt5 / byt5, encoder-decoder): scored as a prefix LM: the encoder
  reads the context's last seq_len bytes (no EOS, as the prefix_lm objective; an empty
  context is the single id EOS, an empty encoder input), the decoder predicts the
  continuation teacher-forced (BOS + continuation[:-1] -> continuation), which must fit
  data.decoder_seq_len. A model trained only on span corruption is a poor prefix LM:
  that is what its numbers then say. The forward is the model's training forward
  (soft deletion), as the train loop's evaluation; not encode_hard.

Any other layout raises NotImplementedError naming the family; so does a model whose
logits are not aligned with its byte targets (e.g. a word-level prediction head).

Bits per byte (bpb_on_documents): for "bytes" / "words" / "bpe" the documents are laid
out by the family's layout (seed None) and scored with hnet.train.token_losses, which
is what the train loop's held-out evaluation computes (EOS targets included; BPE counts
each target token's bytes), so on the eval split it reproduces the loop's bpb. For
"span_corruption" it is the prefix-LM bpb: every document is cut into decoder_seq_len
byte pieces, each predicted from the seq_len bytes before it (EOS not scored).

Batches have a fixed number of rows (`batch_size`, padding rows are all zero), so each
family compiles once per row shape.
"""
from __future__ import annotations

import math
import weakref
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from hnet import bytes as hbytes
from hnet.data import packing

LN2 = math.log(2.0)
STREAM_LAYOUTS = ("bytes", "words")
SUPPORTED_LAYOUTS = STREAM_LAYOUTS + ("bpe", "span_corruption")
LogprobFn = Callable[[list[bytes], list[bytes]], np.ndarray]


def _family(config) -> str:
  return str(config.model.get("name", "?"))


def _layout(config) -> str:
  layout = config.data.get("layout", "bytes")
  if layout not in SUPPORTED_LAYOUTS:
    raise NotImplementedError(
        f"scoring does not support model family {_family(config)!r} with data layout "
        f"{layout!r} yet (supported layouts: {', '.join(SUPPORTED_LAYOUTS)}).")
  return layout


# --------------------------------------------------------------------- jitted forward

class _Forward:
  """A model's parameters and its jitted scoring functions (compiled once per shape)."""

  def __init__(self, model):
    from hnet.train import token_losses  # pylint: disable=g-import-not-at-top
    graphdef, params = nnx.split(model, nnx.Param)
    self.params = nnx.to_pure_dict(params)

    @jax.jit
    def target_logprobs(params, batch):  # -> log p(targets) [B, L] float32
      logits = nnx.merge(graphdef, params)(batch).logits.astype(jnp.float32)
      if logits.shape[:2] != batch["targets"].shape:
        raise NotImplementedError(
            f"model family {model.__class__.__name__}: logits {logits.shape} are not "
            f"aligned with the byte targets {batch['targets'].shape}")
      logp = jax.nn.log_softmax(logits, axis=-1)
      return jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]

    @jax.jit
    def nats_bytes(params, batch):  # -> summed nats, target bytes (hnet.train.token_losses)
      nats, _, nbytes = token_losses(nnx.merge(graphdef, params)(batch), batch)
      return nats, nbytes

    self.target_logprobs, self.nats_bytes = target_logprobs, nats_bytes


_FORWARDS: dict[int, tuple[weakref.ref, _Forward]] = {}


def _forward(model) -> _Forward:
  """The cached _Forward of `model` (by identity, while the model lives)."""
  entry = _FORWARDS.get(id(model))
  if entry is not None and entry[0]() is model:
    return entry[1]
  for key in [k for k, (ref, _) in _FORWARDS.items() if ref() is None]:
    del _FORWARDS[key]
  forward = _Forward(model)
  _FORWARDS[id(model)] = (weakref.ref(model), forward)
  return forward


def _batches(rows: Sequence[dict], batch_size: int):
  """Fixed-size batches {key: [batch_size, ...]}, the last completed with zero rows."""
  for start in range(0, len(rows), batch_size):
    chunk = list(rows[start:start + batch_size])
    zero = {k: np.zeros_like(v) for k, v in chunk[0].items()}
    chunk += [zero] * (batch_size - len(chunk))
    yield start, {k: np.stack([r[k] for r in chunk]) for k in chunk[0]}


def _row_logprobs(model, rows: list[dict], masks: list[np.ndarray], batch_size: int,
                  progress: bool) -> np.ndarray:
  """Summed log p(target) under each row's mask -> [len(rows)] float64."""
  forward = _forward(model)
  out = np.zeros(len(rows), np.float64)
  bar = tqdm(total=len(rows), desc="scoring", unit="row", leave=False, disable=not progress)
  for start, batch in _batches(rows, batch_size):
    logp = np.asarray(jax.device_get(forward.target_logprobs(forward.params, batch)),
                      np.float64)  # [B, L]
    for i in range(start, min(start + batch_size, len(rows))):
      out[i] = float(np.sum(logp[i - start] * masks[i]))
    bar.update(min(batch_size, len(rows) - start))
  bar.close()
  return out


# ------------------------------------------------------------------- rows per layout

def _stream_row(context: bytes, continuation: bytes, config) -> tuple[dict, np.ndarray]:
  """Bytes / words layouts: the row of document context + continuation and the mask of
  the continuation's targets (module docstring). Cuts the context from the left."""
  from hnet.data import pipeline  # pylint: disable=g-import-not-at-top
  seq_len = int(config.data.seq_len)
  layout = pipeline.LAYOUTS[config.data.get("layout", "bytes")]
  if len(continuation) > seq_len:
    raise ValueError(f"continuation of {len(continuation)} bytes exceeds data.seq_len="
                     f"{seq_len}")
  context = context[max(0, len(context) + len(continuation) - seq_len):]
  while True:
    document = context + continuation
    rows = layout([document], config.data, seq_len=seq_len, seed=None)
    row = {k: np.asarray(v) for k, v in rows[0].items()}
    byte_index = row["positions"]
    mask = ((row["loss_mask"] > 0) & (row["segment_ids"] == 1)
            & (byte_index >= len(context)) & (byte_index < len(document)))
    if int(mask.sum()) == len(continuation):
      return row, mask.astype(np.float64)
    if not context:
      raise ValueError(f"layout {config.data.get('layout')!r} cannot hold a continuation of "
                       f"{len(continuation)} bytes in one row")
    context = context[len(context) // 4 + 1:]  # did not fit in row 0: shorter context


def _bpe_row(context_ids: np.ndarray, continuation_ids: np.ndarray,
             seq_len: int) -> tuple[dict, np.ndarray]:
  """BOS + context tokens + continuation tokens -> one row of seq_len inputs and the
  mask of the continuation's targets."""
  from hnet.data import bpe  # pylint: disable=g-import-not-at-top
  if len(continuation_ids) > seq_len:
    raise ValueError(f"continuation of {len(continuation_ids)} tokens exceeds data.seq_len="
                     f"{seq_len}")
  keep = max(0, seq_len - len(continuation_ids))
  context_ids = context_ids[len(context_ids) - keep:] if keep else context_ids[:0]
  ids = np.concatenate([[bpe.BOS_ID], context_ids, continuation_ids]).astype(np.int32)
  n = len(ids)
  stream = np.full(seq_len + 1, bpe.PAD_ID, np.int32)
  stream[:n] = ids
  segment_ids = (np.arange(seq_len + 1) < n).astype(np.int32)
  positions = np.where(segment_ids > 0, np.arange(seq_len + 1), 0).astype(np.int32)
  row = packing.example_from_stream(stream, segment_ids, positions)
  mask = np.zeros(seq_len, np.float64)
  mask[len(context_ids):n - 1] = 1.0  # target t is ids[t + 1]
  return row, mask


def _encdec_row(context: bytes, continuation: bytes, config) -> tuple[dict, np.ndarray]:
  """Prefix-LM row for an encoder-decoder: encoder = the context's tail, decoder
  predicts the continuation."""
  encoder_length = int(config.data.seq_len)
  decoder_length = int(config.data.get("decoder_seq_len", 0) or max(encoder_length // 4, 2))
  if len(continuation) > decoder_length:
    raise ValueError(f"continuation of {len(continuation)} bytes exceeds "
                     f"data.decoder_seq_len={decoder_length}")
  encoder_ids = hbytes.encode(context[max(0, len(context) - encoder_length):])
  if not len(encoder_ids):
    encoder_ids = np.array([hbytes.EOS_ID], np.int32)
  targets = hbytes.encode(continuation)
  e, d = len(encoder_ids), len(targets)
  row = {"encoder_inputs": np.full(encoder_length, hbytes.PAD_ID, np.int32),
         "encoder_segment_ids": np.zeros(encoder_length, np.int32),
         "encoder_positions": np.zeros(encoder_length, np.int32),
         "decoder_inputs": np.full(decoder_length, hbytes.PAD_ID, np.int32),
         "targets": np.full(decoder_length, hbytes.PAD_ID, np.int32),
         "segment_ids": np.zeros(decoder_length, np.int32),
         "positions": np.zeros(decoder_length, np.int32),
         "loss_mask": np.zeros(decoder_length, np.float32)}
  row["encoder_inputs"][:e] = encoder_ids
  row["encoder_segment_ids"][:e] = 1
  row["encoder_positions"][:e] = np.arange(e)
  if d:
    row["targets"][:d] = targets
    row["decoder_inputs"][:d] = np.concatenate([[hbytes.BOS_ID], targets[:-1]])
    row["segment_ids"][:d] = 1
    row["positions"][:d] = np.arange(d)
    row["loss_mask"][:d] = 1.0
  return row, row["loss_mask"].astype(np.float64)


def bpe_tokenizer(config):
  """The BPE tokenizer of a run config (data.bpe_tokenizer; see hnet/data/bpe.py)."""
  from hnet.data import bpe  # pylint: disable=g-import-not-at-top
  return bpe.tokenizer_for(config.data)


# ---------------------------------------------------------------------- public API

def make_logprob_fn(model, config, *, batch_size: int = 32, tokenizer=None,
                    progress: bool = False) -> LogprobFn:
  """-> fn(contexts, continuations) -> summed log p(continuation | context) in nats,
  np.ndarray [n] float64 (module docstring). batch_size: rows per forward pass."""
  layout = _layout(config)
  if layout == "bpe":
    tokenizer = tokenizer or bpe_tokenizer(config)
    seq_len = int(config.data.seq_len)

  def logprob_fn(contexts: list[bytes], continuations: list[bytes]) -> np.ndarray:
    if len(contexts) != len(continuations):
      raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    contexts = [bytes(c) for c in contexts]
    continuations = [bytes(c) for c in continuations]
    out = np.zeros(len(contexts), np.float64)  # an empty continuation has log p = 0
    scored = [i for i, x in enumerate(continuations) if x]
    if not scored:
      return out
    contexts = [contexts[i] for i in scored]
    continuations = [continuations[i] for i in scored]
    if layout == "bpe":
      encoded = tokenizer.encode_batch(contexts + continuations)
      pairs = [_bpe_row(encoded[i], encoded[len(contexts) + i], seq_len)
               for i in range(len(contexts))]
    elif layout == "span_corruption":
      pairs = [_encdec_row(c, x, config) for c, x in zip(contexts, continuations)]
    else:
      pairs = [_stream_row(c, x, config) for c, x in zip(contexts, continuations)]
    rows, masks = [p[0] for p in pairs], [p[1] for p in pairs]
    out[scored] = _row_logprobs(model, rows, masks, batch_size, progress)
    return out

  return logprob_fn


def nats_and_bytes(model, config, documents: Sequence[bytes], *, batch_size: int = 32,
                   progress: bool = False) -> tuple[float, float]:
  """Summed nats and the bytes they stand for over `documents` (module docstring)."""
  layout = _layout(config)
  documents = [bytes(d) for d in documents if len(d)]
  if not documents:
    raise ValueError("no non-empty documents to score")
  if layout == "span_corruption":
    encoder_length = int(config.data.seq_len)
    decoder_length = int(config.data.get("decoder_seq_len", 0) or max(encoder_length // 4, 2))
    contexts, pieces = [], []
    for doc in documents:
      for start in range(0, len(doc), decoder_length):
        contexts.append(doc[max(0, start - encoder_length):start])
        pieces.append(doc[start:start + decoder_length])
    logprob_fn = make_logprob_fn(model, config, batch_size=batch_size, progress=progress)
    return -float(np.sum(logprob_fn(contexts, pieces))), float(sum(map(len, pieces)))
  from hnet.data import pipeline  # pylint: disable=g-import-not-at-top
  rows = pipeline.LAYOUTS[layout](documents, config.data, seq_len=int(config.data.seq_len),
                                  seed=None)
  rows = [{k: np.asarray(v) for k, v in rows[i].items()} for i in range(len(rows))]
  forward = _forward(model)
  nats, nbytes = 0.0, 0.0
  bar = tqdm(total=len(rows), desc="bpb", unit="row", leave=False, disable=not progress)
  for start, batch in _batches(rows, batch_size):
    batch_nats, batch_bytes = jax.device_get(forward.nats_bytes(forward.params, batch))
    nats, nbytes = nats + float(batch_nats), nbytes + float(batch_bytes)
    bar.update(min(batch_size, len(rows) - start))
  bar.close()
  return nats, nbytes


def bpb_on_documents(model, config, documents: Sequence[bytes], *, batch_size: int = 32,
                     progress: bool = False) -> float:
  """Bits per byte of `model` on `documents` (module docstring)."""
  nats, nbytes = nats_and_bytes(model, config, documents, batch_size=batch_size,
                                progress=progress)
  return nats / LN2 / max(nbytes, 1.0)
