"""Optimizer: AdamW with schedules, clipping and per-parameter-group lr multipliers."""
from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax


def schedule(cfg) -> optax.Schedule:
  """Learning rate vs step for cfg.train: wsd (warmup-stable-decay), cosine or constant."""
  t = cfg.train
  peak, warmup, steps = t.lr, max(int(t.warmup_steps), 1), int(t.steps)
  final = peak * t.min_lr_ratio
  if t.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                 optax.constant_schedule(peak)], [warmup])
  if t.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1), final)
  if t.schedule == "wsd":
    decay = max(int(steps * t.decay_fraction), 1)
    stable = max(steps - warmup - decay, 0)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak),
         optax.linear_schedule(peak, final, decay)], [warmup, warmup + stable])
  raise ValueError(f"unknown train.schedule {t.schedule!r}: use wsd, cosine or constant")


def path_string(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def lr_multiplier_tree(params: Any, multipliers: Mapping[str, float]) -> Any:
  """Per-leaf multiplier: of the regexes in `multipliers` that match the path, the longest
  (the most specific) wins, so `{"^stages/0/": 2.6, "^stages/0/router/": 0.3}` gives the
  router 0.3 whatever the order (a ConfigDict iterates its keys sorted); 1.0 if none."""
  rules = sorted(((re.compile(pattern), float(value)) for pattern, value in multipliers.items()),
                 key=lambda rule: -len(rule[0].pattern))

  def pick(path, _):
    name = path_string(path)
    return next((value for rx, value in rules if rx.search(name)), 1.0)
  return jax.tree_util.tree_map_with_path(pick, params)


def scale_by_tree(multipliers: Any) -> optax.GradientTransformation:
  """Multiplies each update leaf by a fixed number (per-group learning rate)."""
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda m, u: (m * u).astype(u.dtype), multipliers, updates), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def training_lr_multipliers(cfg) -> dict[str, float]:
  """The model family's own rules (hnet.models.lr_multipliers_for, e.g. H-Net's per-stage
  lambdas from the current widths and targets), then cfg.train.lr_multipliers on top."""
  from hnet.models import lr_multipliers_for  # pylint: disable=g-import-not-at-top
  rules = lr_multipliers_for(cfg.model)
  rules.update(dict(cfg.train.lr_multipliers) if cfg.train.get("lr_multipliers") else {})
  return rules


def make_optimizer(cfg, params: Any) -> optax.GradientTransformation:
  """Clip -> AdamW(schedule) -> per-group multipliers. Decay only matrices (ndim >= 2)."""
  t = cfg.train
  parts = []
  if t.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(t.grad_clip))
  parts.append(optax.adamw(schedule(cfg), b1=t.b1, b2=t.b2, weight_decay=t.weight_decay,
                           mask=lambda p: jax.tree.map(lambda x: jnp.ndim(x) >= 2, p)))
  multipliers = training_lr_multipliers(cfg)
  if multipliers:
    parts.append(scale_by_tree(lr_multiplier_tree(params, multipliers)))
  return optax.chain(*parts)
