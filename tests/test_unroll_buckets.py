"""Structure-keyed compilation (issue 12): padded size buckets compute what per-problem unrolls do.

The bucketed path packs several problems into one compiled function (meta/unroll.py `_Group`):
padded flat parameters, segment ids / masks and packed data as tensor inputs, a switch over the
problems' losses. These tests hold it to the per-problem unroll: same meta-loss, meta-gradient
and carry, for problems of every family (transforms included), and check that padding never
reaches the optimizer's per-tensor or problem-wide statistics.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tensorflow as tf

import problems
from learned_opt import config as config_lib
from learned_opt import hrnn
from meta import unroll as unroll_lib


def _one_per_family(max_params: int) -> list:
  """The first default problem of each family with at most max_params parameters, plus a
  minibatch one and a composite transform."""
  chosen, families = [], set()
  for problem in problems.default_problems():
    if problem.num_params <= max_params and problem.family not in families:
      chosen.append(problem)
      families.add(problem.family)
  extra = [p for p in problems.default_problems() if p.num_params <= max_params
           and (p.batch_size is not None or (p.transform or "").startswith("sum"))]
  for problem in extra[:2]:
    if problem not in chosen:
      chosen.append(problem)
  return chosen


SAMPLE = _one_per_family(unroll_lib.MIN_ROWS)
# Augmented network tasks (int32 token data, per-instance scales): a GRU sequence model and an
# autoencoder share the 2,048-row group; a softmax head (100k data elements) has one of its own.
NETS = ["aug(net_gru_h16_sort_t10_v6_b16)", "aug(net_ae_f32_h16_z2_relu_none_m2_b64)",
        "aug(net_head_softmax_mixture_f96_o10_b64)"]


# A problem and its noisy copy, twice (full batch; minibatched), and a sum whose noise is its
# own (`SumTask.perturb_gradients`), which keeps a branch per problem.
NOISE_PAIRS = ["bowl_k1", "bowl_k1_noise0.1", "logreg_f10_sep2_b100",
               "logreg_f10_sep2_b100_noise0.5", "sum_literature9_quadratics2",
               "sum_literature9_quadratics2_noise0.5"]


# Padding families (`Problem.padding_family`): eight branches for seventeen problems of
# different sizes, noise levels, powers, scales and matrices.
PADDED = ["norm_d19_p1_noise0.1", "norm_d27_p1", "norm_d22_p3", "min_max_well_d12",
          "min_max_well_d20", "dependency_chain_d12", "dependency_chain_d20",
          "quadratic_d20_noise0.5", "quadratic_d25", "bowl_k0.1", "bowl_k5_rot45",
          "sparse_0.99(bowl_k1)", "sparse_0.99(bowl_k5)", "rescale_8(norm_d18_p1.5)",
          "rescale_50(norm_d18_p2)", "log(quadratic_d20)", "log(quadratic_d50)"]


def test_sample_covers_every_family_and_shares_one_group():
  assert {p.family for p in SAMPLE} == {p.family for p in problems.default_problems()}
  assert any(p.batch_size is not None for p in SAMPLE)
  unroller = unroll_lib.Unroller(config_lib.stable(), max_steps=8, compile_by="bucket",
                                 problems=SAMPLE)
  assert unroller.num_groups() == 1


@pytest.mark.parametrize("config_name,mode,sample", [
    ("stable", "xla", "paper_pair"), ("paper", "function", "paper"),
    ("stable", "function", "padded"),
    ("stable", "function", "nets"), ("stable", "function", "noise_pairs"),
    # Bucketed = per-problem under the batch meta-loss on networks (28 s) is slow-only; the
    # default suite checks that meta-loss in test_batch_meta_loss_changes_only_minibatched_problems.
    pytest.param("stable", "function", "nets_batch", marks=pytest.mark.slow),
    pytest.param("stable", "xla", "paper", marks=pytest.mark.slow)])
def test_bucketed_unroll_matches_per_problem_unroll(config_name, mode, sample, monkeypatch):
  config = config_lib.get(config_name)
  pool = {"paper": SAMPLE, "paper_pair": [SAMPLE[0], SAMPLE[-1]],
          "nets": [problems.get(name) for name in NETS],
          "nets_batch": [problems.get(name) for name in NETS],
          "noise_pairs": [problems.get(name) for name in NOISE_PAIRS],
          "padded": [problems.get(name) for name in PADDED]}[sample]
  if sample.startswith("nets"):
    # Networks compile alone by default; grouped here, to hold the switch over network
    # branches (int32 token data, per-instance scales) to the per-problem unroll.
    for problem in pool:
      monkeypatch.setattr(problem, "compile_alone", False)
  meta_loss = "batch" if sample == "nets_batch" else "full"
  meta = hrnn.MetaParams(config, seed=1).as_dict()
  per_problem = unroll_lib.Unroller(config, max_steps=12, mode=mode, meta_loss=meta_loss)
  bucketed = unroll_lib.Unroller(config, max_steps=12, mode=mode, compile_by="bucket",
                                 problems=pool, meta_loss=meta_loss)
  if sample.startswith("nets"):
    assert bucketed.num_groups() == 2
  if sample == "noise_pairs":
    # One group; a problem and its noisy copy share a branch, with the noise level as data,
    # except where the noise is not the base class's (a sum adds it per part).
    assert bucketed.num_groups() == 1
    group = bucketed.group_for(pool[0])
    assert len(group.branches) == 4 and group.noise_as_data == [True, True, False, False]
  if sample == "padded":
    assert bucketed.num_groups() == 1
    group = bucketed.group_for(pool[0])
    assert len(group.branches) == 8
    # The largest member computes the branch's loss; noise is data only where it differs.
    assert group.problems[group.rep_of["norm_d22_p3"]].name == "norm_d27_p1"
    assert group.noise_as_data[group.branch_of["norm_d27_p1"]]
    assert not group.noise_as_data[group.branch_of["min_max_well_d12"]]
  for problem in pool:
    data = unroll_lib.data_tensors(problem.sample_data(4))
    reference_carry = unroll_lib.start_carry(problem, meta, config, data, 4, [4, 5])
    carry = unroll_lib.start_carry(problem, meta, config, data, 4, [4, 5], unroller=bucketed)
    np.testing.assert_allclose(float(carry.initial_loss), float(reference_carry.initial_loss),
                               rtol=1e-6, err_msg=problem.name)
    # Two partial unrolls, the second from the first's carry.
    for seed in ([7, 8], [9, 10]):
      ref = per_problem(problem, meta, reference_carry, data, 9, seed)
      out = bucketed(problem, meta, carry, data, 9, seed)
      assert int(out.steps) == int(ref.steps) == 9, problem.name
      np.testing.assert_allclose(float(out.meta_loss), float(ref.meta_loss), rtol=1e-5,
                                 atol=1e-6, err_msg=problem.name)
      # Relative to the meta-gradient's overall scale: single entries can be ~1e-12 (a
      # problem that barely moves), where float round-off is the whole value.
      scale = max(float(np.max(np.abs(g))) for g in ref.meta_grads.values()) + 1e-30
      for key, ref_grad in ref.meta_grads.items():
        np.testing.assert_allclose(out.meta_grads[key] / scale, ref_grad / scale, atol=2e-4,
                                   err_msg=f"{problem.name}: {key}")
      for got, want in zip(out.carry.params, ref.carry.params):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=problem.name)
      for field in hrnn.State._fields:
        got, want = getattr(out.carry.state, field), getattr(ref.carry.state, field)
        assert got.shape == want.shape, (problem.name, field)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5,
                                   err_msg=f"{problem.name}: {field}")
      for stat in ("final_loss", "log_lr_mean", "log_lr_std", "log_lr_min", "log_lr_max"):
        np.testing.assert_allclose(float(getattr(out, stat)), float(getattr(ref, stat)),
                                   rtol=1e-5, atol=1e-5, err_msg=f"{problem.name}: {stat}")
      reference_carry, carry = ref.carry, out.carry


def test_recomputed_gradients_give_the_same_meta_gradient(monkeypatch):
  """The meta-gradient recomputes each step's problem gradient (`unroll._recomputed`) instead
  of keeping its intermediates: the same meta-loss, meta-gradient and carry as keeping them,
  for a group with a noise pair, a minibatched problem and a sum (second derivatives on)."""
  config = config_lib.stable()
  pool = [problems.get(name) for name in NOISE_PAIRS]
  meta = hrnn.MetaParams(config, seed=2).as_dict()
  outputs = {}
  for recompute, max_steps in ((True, 11), (False, 13)):   # distinct compile-cache keys
    monkeypatch.setattr(unroll_lib, "_recompute", lambda _, r=recompute: r)
    unroller = unroll_lib.Unroller(config, max_steps=max_steps, mode="function",
                                   compile_by="bucket", problems=pool)
    for problem in pool[1:4]:
      data = unroll_lib.data_tensors(problem.sample_data(3))
      carry = unroll_lib.start_carry(problem, meta, config, data, 3, [1, 2], unroller=unroller)
      outputs[recompute, problem.name] = unroller(problem, meta, carry, data, 9, [5, 6])
  for problem in pool[1:4]:
    got, want = outputs[True, problem.name], outputs[False, problem.name]
    np.testing.assert_allclose(float(got.meta_loss), float(want.meta_loss), rtol=1e-6)
    assert set(got.meta_grads) == set(want.meta_grads)
    scale = max(float(np.max(np.abs(g))) for g in want.meta_grads.values())
    assert scale > 0, problem.name
    for key, grad in want.meta_grads.items():
      np.testing.assert_allclose(got.meta_grads[key] / scale, grad / scale, atol=1e-5,
                                 err_msg=f"{problem.name}: {key}")
    np.testing.assert_allclose(got.carry.params[0], want.carry.params[0], rtol=1e-6)


@pytest.mark.parametrize("config_name,mode", [
    ("annealed", "function"),
    # Under XLA (what meta-training runs) the two fuse differently; 68 s on one core: slow-only.
    pytest.param("stable", "xla", marks=pytest.mark.slow),
    pytest.param("annealed", "xla", marks=pytest.mark.slow)])
def test_recomputed_optimizer_step_gives_the_same_meta_gradient(config_name, mode, monkeypatch):
  """The meta-gradient recomputes each optimizer step in its backward pass
  (`unroll._recomputed_step`) instead of keeping the step's intermediates: the same meta-loss,
  meta-gradient, parameters and state as keeping them, float32 state (`stable`) and bfloat16
  (`annealed`), by problem and bucketed."""
  config = config_lib.get(config_name)
  pool = [problems.get(name) for name in NOISE_PAIRS[:3]]
  meta = hrnn.MetaParams(config, seed=2).as_dict()
  plain = unroll_lib._recomputed_step   # pylint: disable=protected-access
  outputs = {}
  for recompute, max_steps in ((True, 11), (False, 13)):   # distinct compile-cache keys
    if not recompute:
      monkeypatch.setattr(unroll_lib, "_recomputed_step", lambda config, seg: (
          lambda meta, state, grad: hrnn.step_flat(meta, state, grad, config, seg)))
    for compile_by in ("problem", "bucket"):
      unroller = unroll_lib.Unroller(config, max_steps=max_steps, mode=mode,
                                     compile_by=compile_by, problems=pool)
      for problem in pool[1:]:
        data = unroll_lib.data_tensors(problem.sample_data(3))
        carry = unroll_lib.start_carry(problem, meta, config, data, 3, [1, 2],
                                       unroller=unroller)
        outputs[recompute, compile_by, problem.name] = unroller(problem, meta, carry, data, 9,
                                                                [5, 6])
  assert unroll_lib._recomputed_step is not plain   # pylint: disable=protected-access
  for key in [k for k in outputs if k[0]]:
    got, want = outputs[key], outputs[(False,) + key[1:]]
    np.testing.assert_allclose(float(got.meta_loss), float(want.meta_loss), rtol=1e-6)
    scale = max(float(np.max(np.abs(g))) for g in want.meta_grads.values())
    assert scale > 0, key
    for name, grad in want.meta_grads.items():
      np.testing.assert_allclose(got.meta_grads[name] / scale, grad / scale, atol=1e-5,
                                 err_msg=f"{key}: {name}")
    for got_param, want_param in zip(got.carry.params, want.carry.params):
      np.testing.assert_allclose(got_param, want_param, rtol=1e-6, atol=1e-7)
    for field in hrnn.State._fields:
      got_value, want_value = getattr(got.carry.state, field), getattr(want.carry.state, field)
      # XLA fuses the two programs differently: float32 round-off, and where that crosses a
      # bfloat16 rounding boundary, one bfloat16 step (2^-8 relative).
      tolerance = ({"rtol": 1e-2, "atol": 1e-3} if want_value.dtype == tf.bfloat16
                   else {"rtol": 1e-5, "atol": 1e-6})
      np.testing.assert_allclose(np.asarray(tf.cast(got_value, tf.float32)),
                                 np.asarray(tf.cast(want_value, tf.float32)),
                                 err_msg=f"{key}: {field}", **tolerance)


def test_carry_stays_padded_between_unrolls_of_a_group(monkeypatch):
  """The bucketed unroller returns a `PaddedCarry`: the next unroll of the same problem takes it
  without padding again, and reading its params or state unpads it (what a checkpoint saves)."""
  config = config_lib.stable()
  pool = [problems.get(name) for name in NOISE_PAIRS[:2]]
  unroller = unroll_lib.Unroller(config, max_steps=10, mode="function", compile_by="bucket",
                                 problems=pool)
  group = unroller.group_for(pool[0])
  pads = []
  original = group.pad_carry
  monkeypatch.setattr(group, "pad_carry", lambda *a: pads.append(1) or original(*a))
  meta = hrnn.MetaParams(config, seed=3).as_dict()
  data = unroll_lib.data_tensors(pool[0].sample_data(1))
  carry = unroll_lib.start_carry(pool[0], meta, config, data, 1, [1, 2], unroller=unroller)
  first = unroller(pool[0], meta, carry, data, 5, [3, 4])
  second = unroller(pool[0], meta, first.carry, data, 5, [5, 6])
  assert isinstance(second.carry, unroll_lib.PaddedCarry) and len(pads) == 1
  unpadded = group.unpad_carry(pool[0], second.carry.padded, carry.initial_loss)
  assert [p.shape for p in second.carry.params] == [tuple(s) for s in pool[0].param_shapes()]
  for got, want in zip(second.carry.params, unpadded.params):
    np.testing.assert_array_equal(got, want)
  for field in hrnn.State._fields:
    np.testing.assert_array_equal(getattr(second.carry.state, field),
                                  getattr(unpadded.state, field))
  saved = unroll_lib.carry_to_numpy(second.carry)
  assert saved["param/0"].shape == tuple(pool[0].param_shapes()[0])
  # Another problem of the same group pads the carry it is given (its own rows).
  other = unroll_lib.start_carry(pool[1], meta, config, data, 1, [1, 2], unroller=unroller)
  unroller(pool[1], meta, other, data, 5, [3, 4])
  assert len(pads) == 2


def test_batch_meta_loss_changes_only_minibatched_problems():
  """--meta_loss batch: the step's minibatch loss replaces the full-data loss in the
  meta-objective of a minibatched problem; a full-batch problem's meta-loss is unchanged, and
  so is the trajectory (the objective never feeds back into the inner training)."""
  config = config_lib.stable()
  meta = hrnn.MetaParams(config, seed=1).as_dict()
  full = unroll_lib.Unroller(config, max_steps=12, mode="function")
  batch = unroll_lib.Unroller(config, max_steps=12, mode="function", meta_loss="batch")
  minibatched = problems.get(NETS[0])
  full_batch = next(p for p in SAMPLE if p.batch_size is None)
  for problem, same in ((minibatched, False), (full_batch, True)):
    data = unroll_lib.data_tensors(problem.sample_data(4))
    carry = unroll_lib.start_carry(problem, meta, config, data, 4, [4, 5])
    a, b = full(problem, meta, carry, data, 9, [7, 8]), batch(problem, meta, carry, data, 9, [7, 8])
    assert np.isfinite(float(a.meta_loss)) and np.isfinite(float(b.meta_loss))
    assert (float(a.meta_loss) == float(b.meta_loss)) == same, problem.name
    for x, y in zip(a.carry.params, b.carry.params):
      np.testing.assert_array_equal(x, y)
  with pytest.raises(ValueError, match="meta_loss"):
    unroll_lib.Unroller(config, max_steps=4, meta_loss="mean")


def _garbage_padded(layout, rows, slots, state, rng):
  """state padded to `rows` / `slots`, with large random values in the padding."""
  def pad(x, total):
    if x.shape[0] == 0:
      return x
    extra = rng.normal(0.0, 50.0, (total - x.shape[0],) + tuple(x.shape[1:]))
    return tf.concat([x, tf.constant(extra, tf.float32)], axis=0)
  fields = {f: pad(getattr(state, f), rows) for f in hrnn.PER_PARAMETER_FIELDS}
  fields["mean_square"] = tf.abs(fields["mean_square"])
  fields["nominal_rms"] = tf.abs(fields["nominal_rms"])
  return state._replace(tensor_hidden=pad(state.tensor_hidden, slots), **fields)


@pytest.mark.parametrize("config_name", ["paper", "stable"])
def test_padding_never_reaches_the_statistics(config_name):
  config = config_lib.get(config_name)
  rng = np.random.default_rng(0)
  meta = hrnn.MetaParams(config, seed=2).as_dict()
  shapes = [(3, 4), (5,), (2, 2, 2)]
  layout = hrnn.Layout(shapes)
  rows, slots = 64, 6
  state = hrnn.init_state(meta, layout, config, hrnn.sample_initial_log_lr(layout, [1, 2]))
  ids = np.full([rows], layout.num_tensors, np.int32)
  ids[:layout.total] = np.repeat(np.arange(layout.num_tensors), layout.sizes)
  counts = np.zeros([slots], np.float32)
  counts[:layout.num_tensors] = layout.sizes
  counts[layout.num_tensors] = rows - layout.total
  element_mask = (np.arange(rows) < layout.total).astype(np.float32)
  tensor_mask = (np.arange(slots) < layout.num_tensors).astype(np.float32)
  padded_seg = hrnn.Segments.padded(ids, counts, element_mask, tensor_mask)
  padded_state = _garbage_padded(layout, rows, slots, state, rng)
  for _ in range(3):
    grad = tf.constant(rng.normal(size=layout.total), tf.float32)
    padded_grad = tf.concat([grad, tf.constant(rng.normal(0, 1e3, rows - layout.total),
                                               tf.float32)], axis=0)
    update, state = hrnn.step_flat(meta, state, grad, config, hrnn.Segments.from_layout(layout))
    padded_update, padded_state = hrnn.step_flat(meta, padded_state, padded_grad, config,
                                                 padded_seg)
    np.testing.assert_allclose(padded_update[:layout.total], update, rtol=1e-5, atol=1e-7)
    assert np.all(padded_update[layout.total:].numpy() == 0.0)
    for field in hrnn.PER_PARAMETER_FIELDS:
      want = getattr(state, field)
      np.testing.assert_allclose(getattr(padded_state, field)[:want.shape[0]], want,
                                 rtol=1e-5, atol=1e-6, err_msg=field)
    np.testing.assert_allclose(padded_state.tensor_hidden[:layout.num_tensors],
                               state.tensor_hidden, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(padded_state.global_hidden, state.global_hidden, rtol=1e-5,
                               atol=1e-6)


def _padded_pairs():
  """For each padding family among the default and off problems: its smallest and largest
  member."""
  families: dict = {}
  for problem in problems.default_problems() + problems.all_problems():
    family = problem.padding_family()
    if family is not None:
      key = unroll_lib._branch_key(problem)   # pylint: disable=protected-access
      families.setdefault(key, {})[problem.name] = problem
  pairs = []
  for members in families.values():
    ordered = sorted(members.values(), key=lambda p: p.num_params)
    if len(ordered) > 1 and ordered[0].num_params < ordered[-1].num_params:
      pairs.append((ordered[0], ordered[-1]))
  return pairs


def test_padding_families_keep_their_promise():
  """`Problem.padding_family`: the larger member's objective at the smaller member's parameters
  and data, zero-padded, is the smaller one's loss, with its gradient on the real entries and
  zeros on the padding."""
  pairs = _padded_pairs()
  assert {type(small).__name__ for small, _ in pairs} >= {
      "Quadratic", "Norm", "MinMaxWell", "DependencyChain", "Rescale", "LogObjective"}
  for small, large in pairs:
    data = small.sample_data(3)
    params = small.initial_params(3, data)
    large_data = large.sample_data(0)
    padded_data = {key: np.pad(data[key], [(0, b - a) for a, b in
                                           zip(np.shape(data[key]), np.shape(large_data[key]))])
                   for key in large_data}
    (shape,), (large_shape,) = small.param_shapes(), large.param_shapes()
    padded = [np.pad(params[0], [(0, large_shape[0] - shape[0])] + [(0, 0)] * (len(shape) - 1))]
    tensors = lambda d: {k: tf.constant(v) for k, v in d.items()}
    want_loss, (want_grad,) = small.gradients(params, tensors(data), [1, 2])
    if unroll_lib._shared_noise(large):   # pylint: disable=protected-access
      # The branch's noise level is the member's, as data.
      got_loss, (got_grad,) = large.gradients(padded, tensors(padded_data), [1, 2],
                                              noise_stdev=tf.constant(small.noise_stdev))
    else:
      assert small.noise_stdev == large.noise_stdev
      got_loss, (got_grad,) = large.gradients(padded, tensors(padded_data), [1, 2])
    np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-5,
                               err_msg=f"{small.name} in {large.name}")
    np.testing.assert_allclose(got_grad[:shape[0]], want_grad, rtol=1e-4, atol=1e-6,
                               err_msg=f"{small.name} in {large.name}")
    if small.noise_stdev == 0.0:
      assert not np.any(got_grad[shape[0]:]), f"{small.name} in {large.name}"


def test_gradient_noise_of_a_larger_shape_starts_with_the_smaller_one():
  """What lets a padded problem's noise equal its own: `base.standard_normal` and
  `base.uniform` draw element by element in flat order, eagerly and under XLA. The integer
  draws agree exactly; Box-Muller's float maths to round-off (a vector's SIMD body and its
  scalar tail round differently)."""
  from problems import base   # pylint: disable=import-outside-toplevel
  seed = tf.constant([5, 6])
  for draw in (base.standard_normal, base.uniform):
    small, large = draw((19, 1), seed).numpy(), draw((27, 1), seed).numpy()
    compiled = tf.function(lambda d=draw: d((27, 1), seed), jit_compile=True)
    if draw is base.uniform:
      np.testing.assert_array_equal(large[:19], small)
      np.testing.assert_array_equal(compiled().numpy(), large)
    else:
      np.testing.assert_allclose(large[:19], small, rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(compiled().numpy(), large, rtol=1e-6, atol=1e-7)
    # A different seed draws different numbers (the check above is not vacuous).
    assert not np.allclose(draw((19, 1), tf.constant([5, 7])).numpy(), small)


def test_default_ensemble_compiles_into_a_few_functions():
  """The 109 problems share 10 compiled unrolls (issue 12: <= 16), 62 branches in all."""
  unroller = unroll_lib.Unroller(config_lib.stable(), max_steps=8, compile_by="bucket",
                                 problems=problems.default_problems())
  assert unroller.num_groups() <= 10
  groups = {id(unroller.group_for(p)): unroller.group_for(p) for p in problems.default_problems()}
  assert len(groups) == unroller.num_groups()
  for group in groups.values():
    assert len(group.branches) <= unroll_lib.MAX_BRANCHES
  # Minibatched problems with much data share a group with others: the meta-gradient
  # recomputes their gradients instead of stacking every branch's activations.
  heavy = problems.get("minibatch_quadratic_d56_n5000_b100")
  assert len(unroller.group_for(heavy).branches) > 1
  # Every problem has a branch; a group pads a problem up only to at most CARRY_UP_ROWS rows.
  for problem in problems.default_problems():
    group = unroller.group_for(problem)
    assert problem.name in group.index
    own = unroll_lib.padded_rows(problem.num_params)
    assert group.rows == own or own < group.rows <= unroll_lib.CARRY_UP_ROWS
  # The noisy copies share their twin's branch, and padding families share one per group.
  assert sum(len(g.branches) for g in groups.values()) <= 62
  for group in groups.values():
    norms = {group.branch_of[p.name] for p in group.problems if type(p).__name__ == "Norm"}
    assert len(norms) <= 1


def test_networks_compile_alone_and_the_paper_set_still_groups():
  """--problems mix with --compile_by bucket: each network its own function (a group of them
  did not finish compiling), the §4.1 problems in their size groups as before."""
  nets = [problems.get(name) for name in NETS]
  unroller = unroll_lib.Unroller(config_lib.stable(), max_steps=8, compile_by="bucket",
                                 problems=SAMPLE + nets)
  for problem in nets:
    assert [p.name for p in unroller.group_for(problem).problems] == [problem.name]
  assert unroller.num_groups() == 1 + len(nets)
  assert all(not p.compile_alone for p in problems.default_problems())


def test_problem_outside_the_pool_gets_a_group_of_its_own():
  pool = SAMPLE[:2]
  unroller = unroll_lib.Unroller(config_lib.stable(), max_steps=8, compile_by="bucket",
                                 problems=pool)
  other = problems.get("quadratic_d784")
  assert [p.name for p in unroller.group_for(other).problems] == ["quadratic_d784"]
  assert unroller.num_groups() == 2


def test_bad_compile_by_is_refused():
  with pytest.raises(ValueError, match="compile_by"):
    unroll_lib.Unroller(config_lib.stable(), max_steps=8, compile_by="name")


def test_compiled_unrolls_record_no_op_tracebacks():
  """The ops of a compiled unroll (and its meta-gradient) are built without the Python stack
  TF records per op (`unroll.no_op_tracebacks`: ~20 % of a compiled group's memory); ops built
  outside it still record theirs, and the switch is put back after a trace that raises."""
  config = config_lib.stable()
  problem = problems.get("bowl_k1")
  unroller = unroll_lib.Unroller(config, max_steps=4, mode="function", compile_by="bucket",
                                 problems=[problem])
  meta = hrnn.MetaParams(config, seed=3).as_dict()
  data = unroll_lib.data_tensors(problem.sample_data(1))
  carry = unroll_lib.start_carry(problem, meta, config, data, 1, [1, 2], unroller=unroller)
  group, bucket = unroller.bucket_inputs(problem, data)
  fn = unroller._compiled(problem, True)  # pylint: disable=protected-access
  graph = fn.get_concrete_function(
      dict(meta), group.pad_carry(problem, carry), *bucket, tf.constant(4),
      tf.constant([3, 4])).graph
  ops = graph.get_operations()
  assert len(ops) > 100
  with_trace = [op for op in ops if op.traceback]
  # Only the function's own argument and output ops, made by tf.function around the body.
  assert {op.type for op in with_trace} <= {"Placeholder", "Identity", "NoOp"}, with_trace[:5]

  def failing(x):
    raise ValueError("boom")
  with pytest.raises(ValueError, match="boom"):
    unroll_lib.compile_fn(failing, "function")(tf.constant(1.0))
  outside = tf.Graph()
  with outside.as_default():
    assert tf.constant(1.0).op.traceback
    with unroll_lib.no_op_tracebacks():
      with unroll_lib.no_op_tracebacks():   # nested
        assert tf.constant(2.0).op.traceback is None
      assert tf.constant(3.0).op.traceback is None
      # Another thread, tracing at the same time, keeps its tracebacks.
      seen = []
      def other():
        with outside.as_default():
          seen.append(tf.constant(4.0).op.traceback)
      thread = threading.Thread(target=other)
      thread.start()
      thread.join()
      assert seen and seen[0]
    assert tf.constant(5.0).op.traceback


def test_a_padding_family_member_that_does_not_fit_is_refused():
  """A member whose data is larger than the largest member's (so no zero-padding embeds it)
  is refused when its group is built, naming both problems."""
  from problems import base   # pylint: disable=import-outside-toplevel

  class Crossed(base.Problem):
    def __init__(self, ndim):
      self.ndim = ndim
      super().__init__(f"crossed_d{ndim}", family=base.SLOW_CONVERGENCE)

    def padding_family(self):
      return ("Crossed",)

    def param_shapes(self):
      return [(self.ndim,)]

    def sample_data(self, seed):
      return {"a": np.ones((10 - self.ndim,), np.float32)}   # shrinks as the params grow

    def objective(self, params, batch):
      return tf.reduce_sum(tf.square(params[0])) + tf.reduce_sum(batch["a"])

  with pytest.raises(ValueError, match=r"crossed_d2 does not pad into crossed_d5"):
    unroll_lib.Unroller(config_lib.stable(), max_steps=4, compile_by="bucket",
                        problems=[Crossed(2), Crossed(5)])
