"""Network families (problems/net_families.py): one graph per family, every instance exactly
its own network, masked entries invisible to the optimizer (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import problems
from learned_opt import config as config_lib
from learned_opt import hrnn
from meta import trainer as trainer_lib
from meta import unroll as unroll_lib
from problems import augment
from problems import net_families
from problems import net_tasks

FAMILIES = net_families.families()
CONFIG = config_lib.stable()


def _tensors(data):
  return {k: tf.constant(v) for k, v in data.items()}


def _perturbed(family, seed, data):
  """The instance's initial parameters plus noise on its own entries (zero elsewhere)."""
  masks = [m.numpy() for m in family.parameter_masks(_tensors(data))]
  rng = np.random.default_rng(seed)
  return [((p + 0.1 * rng.standard_normal(p.shape)) * m).astype(np.float32)
          for p, m in zip(family.initial_params(seed + 7, data), masks)], masks


def test_instances_draw_varied_structures_and_sizes():
  family = FAMILIES[2]
  draws = [family.structure(seed) for seed in range(60)]
  for key in ("depth", "width", "features", "outputs", "act", "norm", "loss"):
    assert len({d[key] for d in draws}) > 1, key
  low, high = family.ranges["width"]
  assert all(low <= d["width"] <= high for d in draws)
  assert family.structure(5) == family.structure(5)
  # One problem, one parameter layout for every instance.
  assert {tuple(family.param_shapes()) for _ in range(2)} == {tuple(family.param_shapes())}


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_instance_is_exactly_its_own_network(family):
  """Loss, minibatch loss and gradient of an instance equal those of a net_tasks.MLP of the
  drawn sizes on the unpadded data; masked entries get exact zeros."""
  for seed in range(3):
    structure = family.structure(seed)
    data = family.sample_data(seed)
    params, masks = _perturbed(family, seed, data)
    own = family.instance_mlp(seed)
    own_params = [tf.constant(p) for p in family.unpad_params(params, structure)]
    own_data = _tensors(family.unpadded(seed, data))
    params = [tf.constant(p) for p in params]
    np.testing.assert_allclose(family.full_loss(params, _tensors(data)),
                               own.full_loss(own_params, own_data), rtol=2e-6)
    loss, grads = family.gradients(params, _tensors(data), tf.constant([3, 4]))
    own_loss, own_grads = own.gradients(own_params, own_data, tf.constant([3, 4]))
    np.testing.assert_allclose(loss, own_loss, rtol=2e-6)
    for got, want in zip(family.unpad_params([g.numpy() for g in grads], structure),
                         own_grads):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    for grad, mask in zip(grads, masks):
      assert np.all(grad.numpy()[mask == 0] == 0.0)


def test_initialisation_is_the_instance_networks_and_zero_when_masked():
  family = FAMILIES[0]
  data = family.sample_data(4)
  params = family.initial_params(9, data)
  masks = [m.numpy() for m in family.parameter_masks(_tensors(data))]
  for p, m in zip(params, masks):
    assert np.all(p[m == 0] == 0.0)
  structure = family.structure(4)
  first = family.unpad_params(params, structure)[0]    # h0/w: fan-in = drawn features
  gain = net_tasks.init_gain(structure["act"])
  assert 0.2 < np.std(first) / np.sqrt(gain / structure["features"]) < 5.0
  aug = augment.Augmented(family)
  aug_data = aug.sample_data(4)
  for p, m in zip(aug.initial_params(9, aug_data), aug.parameter_masks(_tensors(aug_data))):
    assert np.all(p[m.numpy() == 0] == 0.0)


def _embed_maps(family, structure):
  """Per family tensor: (flat positions in the family's layout of the own network's entries,
  index of the own network's tensor) or None, in the family's tensor order."""
  own_names = [p.name for p in family._mlp(structure).spec()]
  own_shapes = dict(zip(own_names, family._mlp(structure).param_shapes()))
  layout = hrnn.Layout(family.param_shapes())
  maps, offset = [], 0
  for param, size in zip(family.spec(), layout.sizes):
    if param.name in own_shapes:
      index = np.indices(own_shapes[param.name]).reshape(len(param.shape), -1)
      maps.append((offset + np.ravel_multi_index(index, param.shape),
                   own_names.index(param.name)))
    else:
      maps.append(None)
    offset += size
  return maps


def _embed_carry(family, structure, own_carry):
  """The own network's carry placed into the family's layout (masked rows: zeros)."""
  maps = _embed_maps(family, structure)
  layout = hrnn.Layout(family.param_shapes())
  own_layout = hrnn.Layout(family._mlp(structure).param_shapes())
  positions = np.concatenate([m[0] for m in maps if m is not None])
  flat = np.zeros([layout.total], np.float32)
  flat[positions] = own_layout.flatten(own_carry.params).numpy()
  params = layout.unflatten(tf.constant(flat))
  state = own_carry.state
  rows = {}
  for field in hrnn.PER_PARAMETER_FIELDS:
    value = getattr(state, field)
    if value.shape[0] == 0:
      continue
    full = np.zeros((layout.total,) + tuple(value.shape[1:]), value.dtype.as_numpy_dtype)
    full[positions] = value.numpy()
    rows[field] = tf.constant(full)
  hidden = np.zeros((layout.num_tensors,) + tuple(state.tensor_hidden.shape[1:]), np.float32)
  for k, m in enumerate(maps):
    if m is not None:
      hidden[k] = state.tensor_hidden.numpy()[m[1]]
  state = state._replace(tensor_hidden=tf.constant(hidden, state.tensor_hidden.dtype), **rows)
  return unroll_lib.Carry(params, state, own_carry.initial_loss), positions


@pytest.mark.parametrize("config_name", [
    "stable", pytest.param("annealed", marks=pytest.mark.slow)])
def test_masked_entries_are_invisible_to_the_optimizer(config_name):
  """An unroll of a family's instance equals the unroll of its own network from the same
  state: meta-loss, meta-gradient, parameters and optimizer state on the real rows, so the
  masked rows change no per-tensor or problem-wide statistic; they stay exactly zero."""
  config = config_lib.PRESETS[config_name]()
  meta = hrnn.MetaParams(config, seed=3).as_dict()
  family = FAMILIES[2]
  # An instance with whole tensors masked (a layer past its depth; no normalisation) too.
  seed = next(s for s in range(100) if family.structure(s)["depth"] < family.max_depth
              and family.structure(s)["norm"] == "none")
  structure = family.structure(seed)
  data = family.sample_data(seed)
  own = family.instance_mlp(seed)
  own_data = _tensors(family.unpadded(seed, data))
  own_carry = unroll_lib.start_carry(own, meta, config, own_data, 11, [5, 6])
  carry, positions = _embed_carry(family, structure, own_carry)
  outs = []
  for problem, c, d in ((own, own_carry, own_data), (family, carry, _tensors(data))):
    unroller = unroll_lib.Unroller(config, max_steps=16, mode="function")
    outs.append(unroller(problem, meta, c, d, 12, [7, 8]))
  want, got = outs
  np.testing.assert_allclose(got.meta_loss, want.meta_loss, rtol=1e-5)
  for key in want.meta_grads:
    np.testing.assert_allclose(got.meta_grads[key], want.meta_grads[key], rtol=2e-3,
                               atol=1e-6, err_msg=key)
  layout = hrnn.Layout(family.param_shapes())
  own_layout = hrnn.Layout(own.param_shapes())
  flat = layout.flatten(got.carry.params).numpy()
  np.testing.assert_allclose(flat[positions], own_layout.flatten(want.carry.params),
                             rtol=1e-4, atol=1e-6)
  masked = np.ones(layout.total, bool)
  masked[positions] = False
  assert masked.any() and np.all(flat[masked] == 0.0)
  np.testing.assert_allclose(got.carry.state.log_lr.numpy()[positions],
                             want.carry.state.log_lr, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got.carry.state.global_hidden, want.carry.state.global_hidden,
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got.log_lr_mean, want.log_lr_mean, rtol=1e-5, atol=1e-5)


def test_bucketed_family_unroll_matches_per_problem_and_compiles_once():
  """Two instances of one augmented family (different depths or widths) share one compiled
  function; each equals its per-problem unroll."""
  pool = problems.netfam_problems()
  problem = pool[0]     # one hidden layer: the smallest graph
  assert problem.masked_parameters
  bucket = unroll_lib.Unroller(CONFIG, max_steps=8, mode="function", compile_by="bucket",
                               problems=pool)
  single = unroll_lib.Unroller(CONFIG, max_steps=8, mode="function")
  meta = hrnn.MetaParams(CONFIG).as_dict()
  structures = set()
  for seed in (1, 2):
    data = unroll_lib.data_tensors(problem.sample_data(seed))
    structures.add(tuple(sorted(problem.inner.structure(seed).items())))
    carry = unroll_lib.start_carry(problem, meta, CONFIG, data, seed, [seed, 1])
    a = single(problem, meta, carry, data, 6, [seed, 2])
    b = bucket(problem, meta, carry, data, 6, [seed, 2])
    np.testing.assert_allclose(b.meta_loss, a.meta_loss, rtol=1e-5)
    for key in a.meta_grads:
      np.testing.assert_allclose(b.meta_grads[key], a.meta_grads[key], rtol=1e-3, atol=1e-6)
    for x, y, m in zip(a.carry.params, b.carry.params, problem.parameter_masks(data)):
      np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-7)
      assert np.all(y.numpy()[m.numpy() == 0] == 0.0)
  assert len(structures) == 2
  assert bucket.num_compiled() == 1
  traced = bucket._compiled(problem, True)  # pylint: disable=protected-access
  assert traced.experimental_get_tracing_count() == 1


def test_masked_problem_compiles_alone():
  family = FAMILIES[0]
  with pytest.raises(ValueError, match="compiles alone"):
    unroll_lib._Group([family, problems.get("bowl_k1")])  # pylint: disable=protected-access


def test_netfam_set_is_one_function_per_family():
  pool, weights = trainer_lib.resolve_problem_set("netfam")
  assert weights is None and len(pool) == len(FAMILIES)
  assert all(isinstance(p, augment.Augmented) and p.masked_parameters for p in pool)
  unroller = unroll_lib.Unroller(CONFIG, max_steps=8, compile_by="bucket", problems=pool)
  assert unroller.num_groups() == len(FAMILIES)
  assert problems.get(pool[0].name) is pool[0]


def test_mixfam_set_mixes_the_paper_set_with_the_families():
  paper, _ = trainer_lib.resolve_problem_set("paper")
  netfam, _ = trainer_lib.resolve_problem_set("netfam")
  for spec, ratio in (("mixfam", 0.5), ("mixfam:0.4", 0.4)):
    pool, weights = trainer_lib.resolve_problem_set(spec)
    assert pool == paper + netfam and len(weights) == len(pool)
    assert abs(weights.sum() - 1.0) < 1e-12 and abs(weights[len(paper):].sum() - ratio) < 1e-12
  for spec in ("mixfam:1", "mixfam:0", "mixfam:x"):
    with pytest.raises(ValueError, match="mixfam:R"):
      trainer_lib.resolve_problem_set(spec)


@pytest.mark.parametrize("estimator, extra", [("pes", {}), ("tbptt", {"tbptt_tasks": 4})])
def test_population_estimators_draw_at_the_mix_ratio(tmp_path, estimator, extra):
  """PES and the TBPTT population draw their tasks with the set's weights (until the thirteenth
  session both drew uniformly over the pool, so mixfam:0.4 gave the families 5 of 114 draws)."""
  trainer = trainer_lib.Trainer(trainer_lib.Options(
      train_dir=str(tmp_path / "run"), problems="mixfam:0.4", estimator=estimator, seed=3,
      config="annealed", **extra))
  if estimator == "pes":
    new_task = trainer.estimator._new_task  # pylint: disable=protected-access
    draws = [new_task(None).problem for _ in range(2000)]
  else:
    sampler = trainer.estimator._single_sampler()  # pylint: disable=protected-access
    draws = [sampler.next_trajectory(None).problem for _ in range(2000)]
  fraction = np.mean(["netfam" in name for name in draws])
  assert abs(fraction - 0.4) < 0.04, fraction


@pytest.mark.parametrize("estimator, extra", [("tbptt", {}), ("tbptt", {"tbptt_tasks": 4}),
                                              ("pes", {})])
def test_every_estimator_draws_its_problems_through_one_method(tmp_path, monkeypatch,
                                                               estimator, extra):
  """One draw site (Sampler.draw_problem) for all estimators, so the mix ratio cannot be lost
  in one of them again."""
  calls = []
  original = trainer_lib.Sampler.draw_problem
  def counted(self, rng=None):
    calls.append(rng)
    return original(self, rng)
  monkeypatch.setattr(trainer_lib.Sampler, "draw_problem", counted)
  trainer = trainer_lib.Trainer(trainer_lib.Options(
      train_dir=str(tmp_path / "run"), problems="mixfam:0.4", estimator=estimator, seed=3,
      config="annealed", **extra))
  if estimator == "pes":
    names = [trainer.estimator._new_task(None).problem for _ in range(5)]  # pylint: disable=protected-access
  elif "tbptt_tasks" in extra:
    sampler = trainer.estimator._single_sampler()  # pylint: disable=protected-access
    names = [sampler.next_trajectory(None).problem for _ in range(5)]
  else:
    names = [trainer.sampler.next_trajectory(None).problem for _ in range(5)]
  assert len(calls) == 5 and all(name in trainer.problems_by_name for name in names)


@pytest.mark.parametrize("family", [FAMILIES[0]] + [
    pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES[1:]], ids=lambda f: f.name)
def test_adam_trains_an_instance_of_every_family(family):
  data = {k: tf.constant(v) for k, v in family.sample_data(6).items()}
  variables = [tf.Variable(p) for p in family.initial_params(6, data)]
  adam = tf.keras.optimizers.Adam(3e-3)
  before = float(family.full_loss(variables, data))
  for step in range(150):
    _, grads = family.gradients(variables, data, tf.constant([step, 1]))
    adam.apply_gradients(zip(grads, variables))
  after = float(family.full_loss(variables, data))
  assert np.isfinite(after) and after < 0.9 * before, (family.name, before, after)


def test_listing(capsys):
  from problems import __main__ as listing
  assert listing.main(["--list", "--netfam", "--samples", "2"]) == 0
  out = capsys.readouterr().out
  assert all(family.name in out for family in FAMILIES) and "seed 1:" in out
