"""Training: one pure, jitted train_step and the loop around it.

The state is a plain pytree: {"step", "params", "opt_state", "rng", "extra"}.
`params` is the model's nnx.Param state as a pure dict; the model is rebuilt from
its graphdef inside the step, so nothing stateful crosses jit.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hnet import checkpoint, sharding
from hnet.models import build_model, controller_for
from hnet.models.output import ModelOutput
from hnet.optim import make_optimizer

LN2 = math.log(2.0)
BATCH_AXES = ("batch", "length")


@dataclasses.dataclass
class Setup:
  """What the jitted functions close over: built once per run."""
  config: Any
  mesh: Mesh
  graphdef: Any
  tx: optax.GradientTransformation
  abstract_state: Any      # ShapeDtypeStruct tree with shardings
  state_shardings: Any
  controller: Any          # family hook for non-gradient state (e.g. MrT5's PI controller) or None

  def batch_sharding(self, batch) -> Any:
    return jax.tree.map(lambda x: sharding.named_sharding(self.mesh, BATCH_AXES[:np.ndim(x)], np.shape(x)),
                        batch)


def abstract_model(model_config, seed: int = 0):
  return nnx.eval_shape(lambda: build_model(model_config, nnx.Rngs(seed)))


def make_setup(config, mesh: Mesh) -> Setup:
  with sharding.rules(config.mesh.get("rules", sharding.DEFAULT_RULES)):
    model = abstract_model(config.model, config.seed)
    graphdef, param_state = nnx.split(model, nnx.Param)
    params_shape = nnx.to_pure_dict(param_state)
    axes = sharding.param_axes(param_state)
    param_shardings = sharding.tree_shardings(mesh, axes, params_shape)
  tx = make_optimizer(config, params_shape)
  replicated = NamedSharding(mesh, PartitionSpec())
  controller = controller_for(config.model)
  extra = controller.init() if controller else {}

  def init_opt(params):
    return tx.init(params)
  opt_shape = jax.eval_shape(init_opt, params_shape)
  opt_shardings = optax.tree_map_params(tx, lambda _, s: s, opt_shape, param_shardings,
                                        transform_non_params=lambda _: replicated)
  state_shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings,
                     "rng": replicated, "extra": jax.tree.map(lambda _: replicated, extra)}
  shapes = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params_shape,
            "opt_state": opt_shape, "rng": jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))),
            "extra": jax.eval_shape(lambda: extra)}
  abstract_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                shapes, state_shardings)
  return Setup(config, mesh, graphdef, tx, abstract_state, state_shardings, controller)


def init_state(setup: Setup, eager: bool = False) -> Any:
  """Initialises parameters directly into their shardings (no host round trip).

  eager=True builds the state op by op on the default device, then places it into the
  same shardings: for tiny models (the tests), whose one init program per model and mesh
  takes seconds to compile (~40 ms per random parameter) while the op-by-op programs are
  one per parameter shape and kept for every later model. The values are the same draws;
  a fused program may round an initialiser's last bit differently (~1e-7 at f32)."""
  cfg = setup.config

  def init():
    model = build_model(cfg.model, nnx.Rngs(cfg.seed))
    return _new_state(setup, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  if eager:
    # copies: arrays the op-by-op init shares (e.g. zero moments) become distinct
    # buffers, as the jitted init's outputs are, so that the train step may donate them
    return jax.device_put(init(), setup.state_shardings, may_alias=False)
  with jax.set_mesh(setup.mesh), sharding.rules(cfg.mesh.get("rules", sharding.DEFAULT_RULES)):
    return jax.jit(init, out_shardings=setup.state_shardings)()


def _new_state(setup: Setup, params) -> dict[str, Any]:
  """A new run's state around `params`: step 0, zero optimizer moments, the seed's RNG."""
  extra = setup.controller.init() if setup.controller else {}
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": setup.tx.init(params),
          "rng": jax.random.key_data(jax.random.key(setup.config.seed + 1)), "extra": extra}


def state_with_params(setup: Setup, params) -> Any:
  """A new run's state holding given parameters (e.g. imported ones) in the state's
  shardings, without initialising any."""
  with jax.set_mesh(setup.mesh):
    return jax.jit(functools.partial(_new_state, setup), out_shardings=setup.state_shardings)(params)


def warm_start(setup: Setup, state: Any, path: str) -> Any:
  """`state` with the parameters it shares with the checkpoint at `path` copied in
  (train.init_from); the others (e.g. MrT5's delete gate on a ByT5 run) keep their init.
  The optimizer state is built afresh for the new parameters; step, RNG and data start
  from zero, as in a new run."""
  copied, missing = checkpoint.load_params(path, setup.abstract_state["params"])
  params = traverse_util.unflatten_dict({**traverse_util.flatten_dict(state["params"]), **copied})
  with jax.set_mesh(setup.mesh):
    opt_state = jax.jit(setup.tx.init, out_shardings=setup.state_shardings["opt_state"])(params)
  logging.getLogger("hnet").info("warm start from %s: %d parameter arrays copied; new: %s", path,
                                 len(copied), ", ".join(missing) or "none")
  return {**state, "params": params, "opt_state": opt_state}


def merge_model(graphdef, params) -> nnx.Module:
  return nnx.merge(graphdef, nnx.State(params))


def token_losses(output: ModelOutput, batch) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Summed nats, number of predicted targets, and bytes they stand for."""
  logits = output.logits.astype(jnp.float32)
  nats = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
  mask = batch["loss_mask"].astype(jnp.float32)
  target_bytes = batch.get("target_bytes")
  target_bytes = mask if target_bytes is None else target_bytes.astype(jnp.float32) * mask
  return jnp.sum(nats * mask), jnp.sum(mask), jnp.sum(target_bytes)


def loss_fn(params, graphdef, batch, num_targets, aux_scale=1.0):
  """Micro-batch nats / targets of the whole batch + aux losses * aux_scale, so that
  summing over the micro-batches of a step gives the full-batch loss exactly."""
  output = merge_model(graphdef, params)(batch)
  nats, count, nbytes = token_losses(output, batch)
  aux = sum(output.aux_losses.values()) if output.aux_losses else 0.0
  loss = nats / jnp.maximum(num_targets, 1.0) + aux_scale * aux
  return loss, {"nats": nats, "count": count, "bytes": nbytes, "aux": output.aux_losses,
                "model": output.metrics}


def train_step(state, batch, *, graphdef, tx, grad_accum: int, controller=None):
  """One optimizer step over `batch` (split into `grad_accum` micro-batches). Pure."""
  if controller is not None:
    batch = {**batch, **controller.batch_inputs(state["extra"], batch)}
  num_targets = jnp.sum(batch["loss_mask"].astype(jnp.float32))
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  if grad_accum == 1:
    (loss, aux), grads = grad_fn(state["params"], graphdef, batch, num_targets)
  else:
    def micro(carry, micro_batch):
      (loss, aux), grads = grad_fn(state["params"], graphdef, micro_batch, num_targets,
                                   1.0 / grad_accum)
      return jax.tree.map(jnp.add, carry, (grads, loss, aux)), None

    micro_batches = jax.tree.map(
        lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch)
    first = jax.tree.map(lambda x: x[0], micro_batches)
    aux_shape = jax.eval_shape(lambda: grad_fn(state["params"], graphdef, first, num_targets)[0][1])
    zeros = (jax.tree.map(jnp.zeros_like, state["params"]), jnp.zeros((), jnp.float32),
             jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape))
    (grads, loss, aux), _ = jax.lax.scan(micro, zeros, micro_batches)
    # Aux losses and model metrics were summed over micro-batches: report their mean.
    aux = {**aux, "aux": jax.tree.map(lambda x: x / grad_accum, aux["aux"]),
           "model": jax.tree.map(lambda x: x / grad_accum, aux["model"])}
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  # "loss" is the task loss (nats per target) that runs are compared by; "objective" adds
  # the aux losses (ratio loss, MrT5 gate regulariser) that the gradient also follows.
  metrics = {"loss": aux["nats"] / jnp.maximum(num_targets, 1.0), "objective": loss,
             "nats": aux["nats"], "targets": aux["count"], "bytes": aux["bytes"],
             "grad_norm": optax.tree.norm(grads),
             # the largest |parameter| after this update (nan / inf: the update is not saved)
             "param_max_abs": optax.tree.max(jax.tree.map(jnp.abs, params)),
             **{f"aux/{k}": v for k, v in aux["aux"].items()},
             **{f"model/{k}": v for k, v in aux["model"].items()}}
  extra = controller.update(state["extra"], metrics) if controller is not None else state["extra"]
  new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
               "rng": state["rng"], "extra": extra}
  return new_state, metrics


def eval_step(params, batch, extra, *, graphdef, controller=None):
  """Summed nats / bytes / targets over the batch, plus model metrics."""
  if controller is not None:
    batch = {**batch, **controller.batch_inputs(extra, batch)}
  output = merge_model(graphdef, params)(batch)
  nats, count, nbytes = token_losses(output, batch)
  return {"nats": nats, "targets": count, "bytes": nbytes,
          **{f"model/{k}": v for k, v in output.metrics.items()}}


def jit_train_step(setup: Setup, batch_example) -> Callable:
  cfg = setup.config
  fn = functools.partial(train_step, graphdef=setup.graphdef, tx=setup.tx,
                         grad_accum=int(cfg.train.grad_accum), controller=setup.controller)
  return jax.jit(fn, in_shardings=(setup.state_shardings, setup.batch_sharding(batch_example)),
                 out_shardings=(setup.state_shardings, None), donate_argnums=(0,))


def jit_eval_step(setup: Setup, batch_example) -> Callable:
  fn = functools.partial(eval_step, graphdef=setup.graphdef, controller=setup.controller)
  return jax.jit(fn, in_shardings=(setup.state_shardings["params"], setup.batch_sharding(batch_example),
                                   setup.state_shardings["extra"]))


def bits_per_byte(nats: float, nbytes: float) -> float:
  return float(nats) / LN2 / max(float(nbytes), 1.0)
