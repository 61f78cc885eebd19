"""Batched sampling over the shared decode_step interface (every family).

Prompts may have different lengths: the part every row has (all but the last id of the
shortest prompt) is consumed in one `model.prefill` pass where the family has one; then
at step t a row feeds its own prompt id while t < len(prompt) and its previous sample
afterwards, so one cache serves the batch, until every row has sampled EOS or its
max_new_bytes. The loop (`_loop`, a lax.while_loop) is jitted once per model graph,
batch bucket, length bucket, prefill length and sampling options: rows are padded to a
power of two and positions to `length_bucket` (the prefill pass too), so a new prompt of
similar length reuses the compiled loop. HAT and the word-pooled models
(hnet.models.hat.generate) run it too, their host-side splitter reached from inside the
loop (HostInput). Two entry points share it:

  generate(model, prompts, ...)             decoder-only families: BOS + prompt bytes,
                                            continued.
  generate_from_source(model, sources, ...) encoder-decoders (MrT5 / ByT5): each source
                                            is encoded (soft deletion, or hard deletion
                                            with `hard_deletion=True`), then the decoder
                                            samples from BOS over that memory.

Sources are laid out as the training rows of hnet/data/span_corruption.py:
  objective "prefix_lm": encoder = the source bytes (no BOS, no EOS; an empty source is
    the single id EOS, as hnet/eval/scoring.py does), decoder = BOS, then the
    continuation. The result is the continuation of the source.
  objective "span_corruption": the source marks each missing span with SPAN_MARKER
    ("<X>"); the j-th marker becomes sentinel 259 + j % 5 and the encoder input ends
    with EOS. The decoder is fed BOS and the first sentinel (every training target starts
    with it) and emits "span 0, sentinel 1, span 1, ..., EOS"; sentinels may be sampled.
    The result renders each sentinel as SPAN_MARKER ("<X>span 0<X>span 1");
    `fill_spans(source, result)` puts the spans back into the source.
Sources of different lengths share a batch: padding has segment id 0, which neither
the encoder nor the decoder's cross-attention attends to.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, NamedTuple, Sequence

import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hnet import bytes as hbytes
from hnet.data import span_corruption as spans

SPAN_MARKER = b"<X>"
OBJECTIVES = spans.OBJECTIVES  # ("span_corruption", "prefix_lm")
SENTINEL_IDS = tuple(range(spans.SENTINEL_BASE, spans.SENTINEL_BASE + spans.NUM_SENTINELS))


def filter_logits(logits: jax.Array, *, temperature: float, top_k: int, top_p: float,
                  extra_ids: Sequence[int] = (),
                  banned_ids: Sequence[int] | None = None) -> jax.Array:
  """logits [B, V] -> scaled logits with everything outside top-k / nucleus set to -inf.

  Byte vocabularies (banned_ids None): special ids (>= 256) are never sampled, except EOS
  and `extra_ids` (sentinels). Other vocabularies (BPE) name the ids never sampled."""
  logits = logits.astype(jnp.float32) / max(temperature, 1e-6)
  vocab = jnp.arange(logits.shape[-1])
  if banned_ids is None:
    allowed = (vocab < hbytes.NUM_BYTES) | (vocab == hbytes.EOS_ID)
  else:
    allowed = ~jnp.isin(vocab, jnp.asarray(banned_ids, jnp.int32))
  for token in extra_ids:
    allowed |= vocab == token
  logits = jnp.where(allowed, logits, -jnp.inf)
  if top_k > 0:
    kth = jnp.sort(logits, axis=-1)[:, -top_k][:, None]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if 0.0 < top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # keep the smallest set whose probability reaches top_p (always at least one)
    cutoff_index = jnp.sum(cumulative < top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


# --------------------------------------------------------------------------- shared loop

@dataclasses.dataclass(frozen=True)
class Sampling:
  """Sampling options (Python values, fixed while the loop is traced)."""
  temperature: float = 1.0  # 0 = greedy
  top_k: int = 0
  top_p: float = 1.0
  extra_ids: tuple[int, ...] = ()  # special ids that may be sampled besides EOS
  banned_ids: tuple[int, ...] | None = None  # non-byte vocabularies: ids never sampled

  def pick(self, logits: jax.Array, uniform: jax.Array) -> jax.Array:
    """logits [B, V], uniform [B] in [0, 1) -> sampled ids [B] int32 (greedy: argmax).

    Inverse-CDF sampling: id i where cdf[i-1] <= u * cdf[-1] < cdf[i], cdf the running sum
    of the filtered probabilities (ids filtered out have probability 0 and are never
    picked). One uniform per row and step, drawn for the whole call before the loop
    (`step_uniforms`): Gumbel-max drew B x V numbers with threefry inside the loop at
    every step, a fifth of the step time at batch 16 on CPU."""
    if self.temperature == 0:
      filtered = filter_logits(logits, temperature=1.0, top_k=0, top_p=1.0,
                               extra_ids=self.extra_ids, banned_ids=self.banned_ids)
      return jnp.argmax(filtered, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits, temperature=self.temperature, top_k=self.top_k,
                             top_p=self.top_p, extra_ids=self.extra_ids,
                             banned_ids=self.banned_ids)
    cdf = jnp.cumsum(jax.nn.softmax(filtered, axis=-1), axis=-1)                # [B, V]
    threshold = uniform[:, None] * cdf[:, -1:]
    picked = jnp.sum(cdf <= threshold, axis=-1)
    return jnp.minimum(picked, logits.shape[-1] - 1).astype(jnp.int32)


def step_uniforms(key: jax.Array, steps: int, rows: int) -> jax.Array:
  """The uniforms of a sampling call: [steps, rows] in [0, 1); step t of row b uses
  [t, b] (so a sample does not depend on how much of the prompt was prefilled)."""
  return jax.random.uniform(key, (steps, rows), jnp.float32)


def length_bucket(length: int) -> int:
  """Cache slots for `length` positions: the smallest 2^k or 3 * 2^(k-1) >= length (at
  least 64), so prompts and outputs of similar length share one compiled loop and the
  cache holds at most 1.5x the positions asked for."""
  bucket = 64
  while bucket < length:
    bucket = bucket * 3 // 2 if bucket & (bucket - 1) == 0 else bucket * 4 // 3
  return bucket


def batch_bucket(rows: int) -> int:
  """Rows of the compiled loop for `rows` prompts: the next power of two (extra rows are
  computed and discarded)."""
  return 1 << max(rows - 1, 0).bit_length()


def prefill_width(model: nnx.Module, shortest_prompt: int, slots: int) -> int:
  """Static width of the `model.prefill` pass (0: none): the length bucket of the prompt
  part every row has that leaves at least one id for the step loop (whose first step
  gives the first logits). The number of ids actually prefilled is traced, so prompts
  within one bucket share the compiled loop. 0 for a model without `prefill`."""
  if not hasattr(model, "prefill") or shortest_prompt < 2:
    return 0
  return min(length_bucket(shortest_prompt - 1), slots)


class StaticGraph:
  """A model's GraphDef as a static jit argument. A GraphDef hashes its static attributes,
  which fails for a model holding a list (H-Net's per-stage ratios): the hash then falls
  back to its printed form, the same for every model of one config; equality is always
  GraphDef equality, so the compiled loop is reused exactly for models of one graph."""

  def __init__(self, graphdef: nnx.GraphDef):
    self.graphdef = graphdef
    try:
      self._hash = hash(graphdef)
    except TypeError:
      self._hash = hash(repr(graphdef))

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other) -> bool:
    return self is other or (isinstance(other, StaticGraph) and self.graphdef == other.graphdef)


_GRAPHS: dict[StaticGraph, StaticGraph] = {}


def static_graph(graphdef: nnx.GraphDef) -> StaticGraph:
  """The one StaticGraph of every graphdef equal to `graphdef`. jit compares static
  arguments by identity first, so a call finds its compiled loop without comparing
  GraphDefs (~0.8 ms for HAT's tiny graph; it was paid at every step when HAT called a
  jitted step per byte)."""
  graph = StaticGraph(graphdef)
  return _GRAPHS.setdefault(graph, graph)


@dataclasses.dataclass(frozen=True)
class HostInput:
  """A per-step decode_step input that only the host can compute from the ids fed so far
  (HAT's word boundaries: a Unicode splitter). Inside the compiled loop each step calls
  fn(handle, fed [B]) -> int32 [B, width] through jax.experimental.io_callback and passes
  the result to model.decode_step(cache, fed, result). `handle` (a traced int32) names the
  host object of this call, so the compiled loop, which holds `fn`, serves every call.
  For the steps that feed ids every row's prompt has, fn runs on the host before the
  loop (a callback costs ~0.2 ms a step on CPU: most of a long prompt's time)."""
  fn: Any
  width: int


# XLA:CPU options of the sampling loop (the train step keeps the defaults):
# - no YNNPACK fusions: XLA:CPU compiles the loop's small matmuls ([B, D] @ [D, F],
#   B <= 16) as YNNPACK fusions by default; each costs ~20 us of dispatch, several times
#   its arithmetic. Tiny Transformer, 256 new bytes: batch 4 0.133 -> 0.112 s, batch 16
#   0.71 -> 0.59 s; batch 1 uses no YNN fusion.
# - copy insertion with region analysis: without it XLA copies the KV caches that the
#   loop updates in place (at batch 1, two cache-sized copies per layer and step). Tiny
#   Transformer batch 1 0.081-0.090 -> 0.068 s (interleaved runs), HAT 0.39 -> 0.29 s,
#   LYT 0.46 -> 0.32 s (best of 5 second calls).
LOOP_CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "",
                             "xla_cpu_copy_insertion_use_region_analysis": True}


def _loop(*args, **kwargs) -> jax.Array:
  """_sampling_loop, jitted for the default backend (see LOOP_CPU_COMPILER_OPTIONS)."""
  return _jitted_loop(jax.default_backend())(*args, **kwargs)


@functools.cache
def _jitted_loop(backend: str):
  return jax.jit(_sampling_loop, static_argnames=("graphdef", "sampling", "width", "host"),
                 compiler_options=LOOP_CPU_COMPILER_OPTIONS if backend == "cpu" else None)


def _sampling_loop(graphdef: StaticGraph, state: nnx.State, encoded: dict | None,
                   prompt: jax.Array, lengths: jax.Array, active: jax.Array,
                   prefill_len: jax.Array, max_new: jax.Array, key: jax.Array,
                   eos_id: jax.Array, host_handle: jax.Array | int = 0,
                   host_prefix: jax.Array | None = None, *, sampling: Sampling, width: int,
                   host: HostInput | None = None) -> jax.Array:
  """The sampling loop, compiled once per (graphdef, shapes, sampling, prefill width).

  prompt [B, T] (PAD after each row's lengths[b] ids; T = cache slots), active [B] (False:
  a padding row), prefill_len, max_new, eos_id scalars. Prefills prompt[:, :prefill_len] in one
  pass over `width` (static) positions, then one
  decode_step per position t (feeding the row's own prompt id while t < lengths[b], its
  last sample after) until every active row has sampled EOS or max_new ids (lax.while_loop:
  the trip count is traced, not the bucket). Returns out [B, T]: out[:, t] = the id
  sampled after position t (PAD where no step ran). Step t samples with
  step_uniforms(key, T, B)[t], so samples do not depend on prefill_len. With `host`
  (HostInput), decode_step's extra input of step t is host_prefix[t] (computed on the
  host before the loop) for t < prefill_len and an io_callback's result after."""
  model = nnx.merge(graphdef.graphdef, state)
  B, T = prompt.shape
  cache = model.init_cache(B, T) if encoded is None else model.init_cache(B, T, encoded)
  if width:
    cache = model.prefill(cache, prompt[:, :width], prefill_len)
  last_step = lengths - 2 + max_new  # [B] the step that samples a row's last new id
  uniforms = step_uniforms(key, T, B)

  def running(carry):
    t, _, _, done, _ = carry
    return (t < T) & ~jnp.all(done)

  def step(carry):
    t, cache, previous, done, out = carry
    fed = jnp.where(t < lengths, jax.lax.dynamic_index_in_dim(prompt, t, 1, keepdims=False),
                    previous)
    if host is None:
      logits, cache = model.decode_step(cache, fed)
    else:
      extra = jax.lax.cond(
          t < prefill_len, lambda: jax.lax.dynamic_index_in_dim(host_prefix, t, 0, False),
          lambda: jax.experimental.io_callback(
              host.fn, jax.ShapeDtypeStruct((B, host.width), jnp.int32), host_handle, fed))
      logits, cache = model.decode_step(cache, fed, extra)
    sample = sampling.pick(logits, jax.lax.dynamic_index_in_dim(uniforms, t, 0, False))  # [B]
    out = jax.lax.dynamic_update_slice(out, sample[:, None], (0, t))
    done = done | ((t >= lengths - 1) & (sample == eos_id)) | (t >= last_step)
    return t + 1, cache, sample, done, out

  first = prefill_len if width else jnp.zeros((), jnp.int32)
  init = (first, cache, jnp.zeros(B, jnp.int32), ~active,
          jnp.full((B, T), hbytes.PAD_ID, jnp.int32))
  return jax.lax.while_loop(running, step, init)[-1]


def memory_limit() -> int:
  """Bytes a generation cache may take: the device's memory limit (host RAM on CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


_CACHE_BYTES: dict = {}  # (graph, batch, length, encoded shapes) -> bytes of the cache


def _cache_bytes(graph: StaticGraph, batch: int, length: int, encoded_types, model, encoded) -> int:
  """Bytes of model.init_cache(batch, length[, encoded]), traced once per key."""
  key = (graph, batch, length, None if encoded_types is None else
         tuple(jax.tree.leaves(encoded_types)))
  if key not in _CACHE_BYTES:
    cache = jax.eval_shape(lambda: model.init_cache(batch, length) if encoded is None
                           else model.init_cache(batch, length, encoded))
    _CACHE_BYTES[key] = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
  return _CACHE_BYTES[key]


def check_length(model: nnx.Module, batch: int, length: int, *, max_new_bytes: int,
                 encoded: dict | None = None) -> None:
  """Raises ValueError for max_new_bytes < 1 or a cache of `batch` x `length` positions
  that would not fit in memory (memory_limit)."""
  if max_new_bytes < 1:
    raise ValueError(f"max_new_bytes={max_new_bytes}: ask for at least 1 byte")
  need = _cache_bytes(static_graph(nnx.graphdef(model)), batch, length,
                     None if encoded is None else jax.tree.map(jax.typeof, encoded), model, encoded)
  if need > memory_limit():
    fits = max(1, int(length * memory_limit() / need) - (length - max_new_bytes))
    raise ValueError(f"max_new_bytes={max_new_bytes} for {batch} prompt(s) needs a "
                     f"{need / 1e9:.1f} GB cache, more than the {memory_limit() / 1e9:.1f} GB "
                     f"of memory; ask for fewer bytes (at most about {fits}) or fewer prompts")


def _sample_ids(model: nnx.Module, prompts: Sequence[np.ndarray], *, max_new_bytes: int,
                seed: int, sampling: Sampling, encoded: dict | None = None,
                eos_id: int = hbytes.EOS_ID, pad_id: int = hbytes.PAD_ID,
                prefill: bool = True, host: HostInput | None = None,
                host_handle: int = 0) -> list[np.ndarray]:
  """Id prompts (each >= 1 id) -> the sampled ids of each row, EOS and after cut off.

  Rows are padded up to batch_bucket and positions to length_bucket (`encoded`, when
  given, has batch_bucket rows already); prefill=False steps through the whole prompt
  (the reference the prefill is tested against). host / host_handle: see HostInput
  (rows = batch_bucket(len(prompts)) is the batch its fn sees)."""
  lengths = np.array([len(x) for x in prompts], np.int32)
  rows, slots = batch_bucket(len(prompts)), length_bucket(int(lengths.max()) + max_new_bytes)
  check_length(model, rows, slots, max_new_bytes=max_new_bytes, encoded=encoded)
  prompt = np.full((rows, slots), pad_id, np.int32)
  prompt[:, 0] = prompts[0][0]  # padding rows: one id, never sampled from
  for row, x in enumerate(prompts):
    prompt[row, :len(x)] = x
  padded_lengths = np.ones(rows, np.int32)
  padded_lengths[:len(prompts)] = lengths
  active = np.arange(rows) < len(prompts)
  width = prefill_width(model, int(lengths.min()), slots) if prefill else 0
  host_prefix = None
  if host is not None:  # the steps that feed prompt ids in every row: fn on the host now
    host_prefix = np.zeros((slots, rows, host.width), np.int32)
    for t in range(int(lengths.min()) - 1):
      host_prefix[t] = host.fn(host_handle, prompt[:, t])
  graphdef, state = nnx.split(model)
  out = np.asarray(_loop(static_graph(graphdef), state, encoded, prompt, padded_lengths, active,
                         np.int32(lengths.min() - 1), np.int32(max_new_bytes),
                         jax.random.key(seed), np.int32(eos_id), np.int32(host_handle),
                         host_prefix, sampling=sampling, width=width, host=host))
  results = []
  for row, n in enumerate(lengths):
    new = out[row, n - 1:n - 1 + max_new_bytes]
    stop = np.flatnonzero(new == eos_id)
    results.append(new[:stop[0]] if stop.size else new)
  return results


# --------------------------------------------------------------------------- decoder-only

def generate(model: nnx.Module, prompts: Sequence[bytes], *, max_new_bytes: int, seed: int = 0,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             stop_at_eos: bool = True) -> list[bytes]:
  """Continues each prompt by up to `max_new_bytes` bytes (greedy when temperature == 0).
  stop_at_eos=False: exactly max_new_bytes per row, a sampled EOS fed on (benchmarks)."""
  ids = [hbytes.encode(p, add_bos=True) for p in prompts]
  sampled = _sample_ids(model, ids, max_new_bytes=max_new_bytes, seed=seed,
                        sampling=Sampling(temperature, top_k, top_p),
                        eos_id=hbytes.EOS_ID if stop_at_eos else -1)
  return [hbytes.decode_bytes(x) for x in sampled]


def generate_bpe(model: nnx.Module, prompts: Sequence[bytes], tokenizer, *, max_new_tokens: int,
                 seed: int = 0, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0) -> list[bytes]:
  """BPE-token models (hnet/data/bpe.py BPETokenizer): each prompt is BOS + its tokens,
  continued by up to `max_new_tokens` tokens (PAD, BOS and the padded ids past the
  tokenizer's vocabulary are never sampled; EOS stops); returns the new bytes."""
  ids = [np.concatenate([[tokenizer.bos_id], tokenizer.encode(p)]).astype(np.int32) for p in prompts]
  vocab_size = int(model.embed.embedding.shape[0])
  banned = (tokenizer.pad_id, tokenizer.bos_id) + tuple(range(tokenizer.vocab_size, vocab_size))
  sampled = _sample_ids(model, ids, max_new_bytes=max_new_tokens, seed=seed,
                        sampling=Sampling(temperature, top_k, top_p, banned_ids=banned),
                        eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
  return [tokenizer.decode(x) for x in sampled]


# --------------------------------------------------------------------------- encoder-decoder

def source_ids(source: bytes, objective: str = "prefix_lm",
               marker: bytes = SPAN_MARKER) -> np.ndarray:
  """One source -> its encoder ids [n], as the training rows of `objective` have them."""
  if objective == "prefix_lm":
    ids = hbytes.encode(source)
    return ids if len(ids) else np.array([hbytes.EOS_ID], np.int32)
  if objective != "span_corruption":
    raise ValueError(f"objective {objective!r} not in {OBJECTIVES}")
  parts = bytes(source).split(marker)
  if len(parts) < 2:
    raise ValueError(f"a span_corruption source marks each missing span with {marker!r}; "
                     f"{source[:40]!r} has none")
  pieces = [hbytes.encode(parts[0])]
  for j, part in enumerate(parts[1:]):
    pieces += [np.asarray([spans.sentinel_id(j)], np.int32), hbytes.encode(part)]
  return np.concatenate(pieces + [np.array([hbytes.EOS_ID], np.int32)]).astype(np.int32)


def source_batch(encoder_ids: Sequence[np.ndarray], length: int | None = None
                 ) -> dict[str, np.ndarray]:
  """Encoder ids of each row -> encoder_inputs / encoder_segment_ids / encoder_positions
  [B, length] (default: max n; one document per row: segment 1, positions 0..n-1;
  padding: PAD, 0, 0)."""
  length = length or max(len(x) for x in encoder_ids)
  batch = {"encoder_inputs": np.full((len(encoder_ids), length), hbytes.PAD_ID, np.int32),
           "encoder_segment_ids": np.zeros((len(encoder_ids), length), np.int32),
           "encoder_positions": np.zeros((len(encoder_ids), length), np.int32)}
  for row, x in enumerate(encoder_ids):
    batch["encoder_inputs"][row, :len(x)] = x
    batch["encoder_segment_ids"][row, :len(x)] = 1
    batch["encoder_positions"][row, :len(x)] = np.arange(len(x))
  return batch


_encode_soft = nnx.jit(lambda model, batch: model.encode(batch))


def encode_sources(model: nnx.Module, batch: dict[str, np.ndarray],
                   hard_deletion: bool = False) -> dict[str, Any]:
  """Encoder batch [B, L] -> {"hidden" [B, C, D], "segment_ids" [B, C], "gate" [B, C] |
  None}: C = L (soft deletion) or the hard-deletion capacity bucket (mrt5.encode_hard)."""
  if hard_deletion:
    from hnet.models import mrt5  # pylint: disable=g-import-not-at-top
    encoded = mrt5.encode_hard(model, batch)
  else:
    encoded = _encode_soft(model, batch)
  return {k: encoded[k] for k in ("hidden", "segment_ids", "gate")}


def deletion_ratios(model: nnx.Module, encoded: dict[str, Any],
                    batch: dict[str, np.ndarray]) -> np.ndarray | None:
  """Per row: the fraction of its encoder positions the gate deletes (G < k/2, what hard
  deletion drops; the same number for soft and hard encodings) [B]; None without a gate."""
  if encoded["gate"] is None:
    return None
  gate, segment_ids = np.asarray(encoded["gate"]), np.asarray(encoded["segment_ids"])
  kept = np.sum((segment_ids > 0) & (gate >= model.gate_k / 2), axis=1)
  real = np.sum(batch["encoder_segment_ids"] > 0, axis=1)
  return 1.0 - kept / np.maximum(real, 1)


def _render(ids: np.ndarray, marker: bytes) -> bytes:
  """Decoder ids -> bytes, each sentinel as `marker`, other special ids dropped."""
  return b"".join(marker if int(t) in SENTINEL_IDS else bytes([int(t)])
                  for t in ids if t < hbytes.NUM_BYTES or int(t) in SENTINEL_IDS)


def fill_spans(source: bytes, output: bytes, marker: bytes = SPAN_MARKER) -> bytes:
  """A span_corruption source and its result ("<X>span 0<X>span 1") -> the source with
  the j-th marker replaced by span j (pairing by order, as span_corruption.uncorrupt);
  markers without a sampled span stay."""
  parts = bytes(source).split(marker)
  filled = output.split(marker)[1:]
  out = [parts[0]]
  for j, part in enumerate(parts[1:]):
    out += [filled[j] if j < len(filled) else marker, part]
  return b"".join(out)


class SourceSamples(NamedTuple):
  texts: list[bytes]                    # per source: continuation / spans (module docstring)
  deletion_ratios: np.ndarray | None    # [B] per source (None: no delete gate, ByT5)
  memory_slots: int                     # encoder slots the decoder attends over (C)


def generate_from_source(model: nnx.Module, sources: Sequence[bytes], *, max_new_bytes: int,
                         objective: str = "prefix_lm", hard_deletion: bool = False,
                         seed: int = 0, temperature: float = 1.0, top_k: int = 0,
                         top_p: float = 1.0, marker: bytes = SPAN_MARKER,
                         stop_at_eos: bool = True) -> SourceSamples:
  """Encoder-decoder sampling: each source is encoded, the decoder samples up to
  `max_new_bytes` ids from BOS (+ the first sentinel for span_corruption) until EOS
  (stop_at_eos=False: exactly max_new_bytes, for benchmarks). The decoder prompt is 1-2
  ids, stepped (there is nothing to prefill)."""
  encoder_ids = [source_ids(s, objective, marker) for s in sources]
  # padding rows (one EOS) up to the batch bucket, positions up to the length bucket:
  # the encoder and the loop compile once for sources of similar length
  padded = encoder_ids + [np.array([hbytes.EOS_ID], np.int32)] * (
      batch_bucket(len(sources)) - len(sources))
  batch = source_batch(padded, length_bucket(max(len(x) for x in encoder_ids)))
  encoded = encode_sources(model, batch, hard_deletion)
  if objective == "span_corruption":
    first = int(spans.sentinel_id(0))
    prompts = [np.array([hbytes.BOS_ID, first], np.int32)] * len(sources)
    sampling = Sampling(temperature, top_k, top_p, extra_ids=SENTINEL_IDS)
  else:
    first = None
    prompts = [np.array([hbytes.BOS_ID], np.int32)] * len(sources)
    sampling = Sampling(temperature, top_k, top_p)
  sampled = _sample_ids(model, prompts, max_new_bytes=max_new_bytes, seed=seed,
                        sampling=sampling, encoded=encoded,
                        eos_id=hbytes.EOS_ID if stop_at_eos else -1)
  if first is not None:
    sampled = [np.concatenate([[first], x]) for x in sampled]
  ratios = deletion_ratios(model, encoded, batch)
  return SourceSamples([_render(x, marker) for x in sampled],
                       None if ratios is None else ratios[:len(sources)],
                       int(encoded["segment_ids"].shape[1]))
