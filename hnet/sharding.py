"""Device mesh and logical-axis sharding, expressed once.

Parameters carry logical axis names as metadata where they are defined
(``nnx.Param(value, axes=("embed", "mlp"))``); activations are constrained with
``shard(x, ("batch", "length", "embed"))``. A single table of rules (kept in the
config, ``config.mesh.rules``) maps logical names onto the mesh axes
``data``, ``fsdp`` and ``tensor``. Nothing else in the code base names mesh axes.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Parameters: the "embed" dimension is sharded over
# fsdp (ZeRO-3 style), the wide dimension of each matmul over tensor. Activations:
# the batch over data and fsdp, hidden features over tensor where it is wide.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("state", None),
    ("conv", None),
    ("layers", None),
    ("norm", None),
)

_RULES: list[tuple[tuple[str, Any], ...]] = [DEFAULT_RULES]


@contextlib.contextmanager
def rules(table: Sequence[tuple[str, Any]]) -> Iterator[None]:
  """Use `table` as the logical-axis rules inside the block."""
  _RULES.append(tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in table))
  try:
    yield
  finally:
    _RULES.pop()


def current_rules() -> tuple[tuple[str, Any], ...]:
  return _RULES[-1]


def logical_to_spec(names: Sequence[str | None] | None) -> PartitionSpec:
  """Logical axis names -> PartitionSpec under the current rules.

  A mesh axis is used at most once per array; a later dimension that maps to an
  axis already used stays replicated.
  """
  if names is None:
    return PartitionSpec()
  table = dict(current_rules())
  used: set[str] = set()
  out = []
  for name in names:
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used)
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else (axes or None))
  return PartitionSpec(*out)


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh. data=-1 takes every device left over."""
  devices = list(jax.devices() if devices is None else devices)
  if data == -1:
    data = len(devices) // (fsdp * tensor)
  shape = (data, fsdp, tensor)
  if math.prod(shape) != len(devices):
    raise ValueError(
        f"mesh data*fsdp*tensor = {data}*{fsdp}*{tensor} = {math.prod(shape)} but "
        f"{len(devices)} devices are visible; set --config.mesh.data=-1 to use them all "
        "or change the mesh sizes.")
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


def check_global_batch(mesh: Mesh, batch_size: int) -> None:
  """Raises ValueError unless `batch_size` rows split evenly over the mesh axes that the
  logical "batch" axis maps to (else the batch would silently be replicated)."""
  names = logical_to_spec(("batch",))[0]
  names = (names,) if isinstance(names, str) else tuple(names or ())
  ways = math.prod(mesh.shape[a] for a in names) if names else 1
  if batch_size >= ways and batch_size % ways == 0:
    return
  below, above = (batch_size // ways) * ways, (batch_size // ways + 1) * ways
  nearest = f"{below} or {above}" if below else str(above)
  axes = " x ".join(f"{a}={mesh.shape[a]}" for a in names)
  raise ValueError(
      f"train.batch_size={batch_size} does not split over the {ways} ways the batch is "
      f"sharded ({axes}): use a multiple of {ways}, nearest {nearest} "
      f"(--config.train.batch_size={above}), or change --config.mesh.data / --config.mesh.fsdp.")


def _fit(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes that do not divide the dimension they would shard."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in names) if names else 1
    out.append(axes if names and dim % size == 0 else None)
  return PartitionSpec(*out)


def named_sharding(mesh: Mesh, names, shape) -> NamedSharding:
  return NamedSharding(mesh, _fit(logical_to_spec(names), shape, mesh))


def shard(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Constrains an activation's sharding by logical names (no-op without a mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or math.prod(mesh.shape.values()) == 1:
    return x
  spec = _fit(logical_to_spec(names), x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def param_axes(state: nnx.State) -> Any:
  """Pure tree of logical axes tuples (or None) matching nnx.to_pure_dict(state)."""
  def axes_of(v):
    return v.get_metadata().get("axes") if isinstance(v, nnx.Variable) else None
  tree = jax.tree.map(lambda v: _Axes(axes_of(v)), state,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(tree)


class _Axes:
  """An opaque leaf so that tuples of names are not flattened as pytrees."""
  def __init__(self, names):
    self.names = names


def tree_shardings(mesh: Mesh, axes_tree: Any, shapes_tree: Any) -> Any:
  """NamedSharding for each leaf of `shapes_tree` from the matching `_Axes` leaf."""
  return jax.tree.map(lambda a, s: named_sharding(mesh, a.names, s.shape), axes_tree,
                      shapes_tree, is_leaf=lambda x: isinstance(x, _Axes))
