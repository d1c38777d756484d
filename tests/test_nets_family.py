"""Tests of the neural-network task family, task augmentation and problem sets (issue 13).

Default run (~1 min on 2 cores): the catalogue's shape and axes, deterministic sampling, no
file I/O, finite losses for every structure, Adam training one representative per axis,
augmentation round trips, the paper / nets / mix sets and their weighted sampling, the
listing. Slow (python -m pytest -m slow tests/test_nets_family.py): Adam on every structure,
and train_meta.py --problems nets / mix: run, resume, export.
"""

from __future__ import annotations

import builtins
import collections
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import problems
from problems import __main__ as problems_cli
from problems import augment, base, net_tasks
from problems.well_behaved import Quadratic
from meta import trainer as trainer_lib

REPO = Path(__file__).resolve().parent.parent
NETS = problems.net_problems()
NAMES = [problem.name for problem in NETS]

# One per axis value that matters for trainability, compiled with XLA in the default run:
# architectures (mlp, head, convnet, a recurrent net, attention, autoencoder), losses
# (softmax, sigmoid, mse, reconstruction), norms (batch, layer), activations (relu, gelu,
# tanh). The full sweep over all 43 structures (LSTMs included) is marked slow.
REPRESENTATIVE = [
    "net_mlp_d2_w128_gelu_layer_mse_teacher_f32_o4_b256",
    "net_head_sigmoid_mixture_f64_o16_bfull",
    "net_conv2_c8-16_relu_batch_maxpool_textures12_k6_b64",
    "net_gru_h16_sort_t10_v6_b16",
    "net_attn_d16_hmm_t12_v10_b16",
    "net_ae_f64_h32_z4_tanh_batch_m4_b128",
]


def adam_losses(problem, seed=0, steps=300, learning_rate=3e-3):
  """(full loss before, after `steps` of Adam on the minibatch gradients), one XLA call.

  The tests ask for a 10 % lower full-data loss: the slowest structure (a depth-3 sigmoid
  MLP under sigmoid cross-entropy) reaches 0.85 of its initial loss in 300 steps."""
  data = {key: tf.constant(value) for key, value in problem.sample_data(seed).items()}
  params = [tf.constant(p) for p in problem.initial_params(seed, data)]

  @tf.function(jit_compile=True)
  def train(params, data):
    first = [tf.zeros_like(p) for p in params]
    second = [tf.zeros_like(p) for p in params]

    def body(i, params, first, second):
      _, grads = problem.gradients(params, data, tf.stack([i, 3]))
      first = [0.9 * m + 0.1 * g for m, g in zip(first, grads)]
      second = [0.999 * v + 0.001 * g * g for v, g in zip(second, grads)]
      t = tf.cast(i + 1, tf.float32)
      params = [p - learning_rate * (m / (1 - 0.9**t)) / (tf.sqrt(v / (1 - 0.999**t)) + 1e-8)
                for p, m, v in zip(params, first, second)]
      return i + 1, params, first, second

    _, params, _, _ = tf.while_loop(lambda i, *_: i < steps, body,
                                    (tf.constant(0), params, first, second))
    return problem.full_loss(params, data)

  return float(problem.full_loss(params, data)), float(train(params, data))


# --- the catalogue ---------------------------------------------------------------------------

def test_catalogue_is_finite_unique_and_cheap():
  assert 32 <= len(NETS) <= 64
  assert len(set(NAMES)) == len(NAMES)
  assert all(problem.family == base.NEURAL_NETWORK for problem in NETS)
  sizes = [problem.num_params for problem in NETS]
  assert min(sizes) >= 700 and max(sizes) <= 50_000
  assert np.median(sizes) <= 10_000
  for problem in NETS:
    assert problem.batch_size is None or 8 <= problem.batch_size <= 512, problem.name
    data = problem.sample_data(0)
    assert sum(value.nbytes for value in data.values()) <= 2_200_000, problem.name
    assert all(value.dtype in (np.float32, np.int32) for value in data.values()), problem.name


def test_every_axis_is_covered():
  values = net_tasks.axis_values(NETS)
  assert set(values["architecture"]) == {"mlp", "linear head", "convnet", "gru", "lstm",
                                         "attention", "autoencoder"}
  mlp_depths = {p.depth for p in NETS if isinstance(p, net_tasks.MLP) and p.depth}
  assert mlp_depths == set(range(1, 9))
  mlp_widths = {p.width for p in NETS if isinstance(p, net_tasks.MLP) and p.depth}
  assert min(mlp_widths) == 8 and max(mlp_widths) == 256
  assert {len(p.channels) for p in NETS if isinstance(p, net_tasks.ConvNet)} == {1, 2, 3}
  assert {p.pool for p in NETS if isinstance(p, net_tasks.ConvNet)} == {"max", "avg"}
  assert set(net_tasks.ACTIVATIONS) <= set(values["activation"])
  assert set(values["norm"]) == set(net_tasks.NORMS)
  assert set(values["loss"]) == set(net_tasks.LOSSES)
  assert set(values["data"]) == (set(net_tasks.IMAGE_KINDS) | set(net_tasks.SEQUENCE_KINDS)
                                 | set(net_tasks.VECTOR_KINDS))
  assert 0 in values["batch"] and min(b for b in values["batch"] if b) == 8
  assert max(values["batch"]) == 512


def test_bad_structures_are_refused():
  with pytest.raises(ValueError, match="bad MLP structure"):
    net_tasks.MLP(2, 16, "softplus", "none", "softmax", "teacher", 32)
  with pytest.raises(ValueError, match="bad ConvNet structure"):
    net_tasks.ConvNet((4, 4, 4), "relu", "none", "max", "blobs", 32, size=12)
  with pytest.raises(ValueError, match="unknown sequence kind"):
    net_tasks.RNN("gru", 8, "palindrome", 32)


# --- instances -------------------------------------------------------------------------------

def _equal(a, b):
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("problem", [problems.get(n) for n in REPRESENTATIVE[:4]]
                         + [problems.get(f"aug({REPRESENTATIVE[0]})")], ids=lambda p: p.name)
def test_sampling_is_deterministic_given_the_seed(problem):
  first, again, other = (problem.sample_data(s) for s in (5, 5, 6))
  assert first.keys() == again.keys() == other.keys()
  assert all(np.array_equal(first[k], again[k]) for k in first)
  assert any(not np.array_equal(first[k], other[k]) for k in first)
  assert _equal(problem.init_params(5), problem.init_params(5))
  assert not _equal(problem.init_params(5), problem.init_params(6))
  assert problem.instance_info(5) == problem.instance_info(5)


def test_instance_draws_are_data_not_structure():
  """Continuous draws vary between instances of one structure (same shapes, one compile)."""
  problem = problems.get("net_mlp_d3_w32_sigmoid_none_sigmoid_teacher_f16_o4_b128")
  infos = [problem.instance_info(seed) for seed in range(12)]
  assert len({info["init_scale"] for info in infos}) == 12
  assert len({info["input_scale"] for info in infos}) == 12
  assert {info["label_noise"] == 0.0 for info in infos} == {True, False}
  shapes = {tuple((k, v.shape) for k, v in sorted(problem.sample_data(s).items()))
            for s in range(3)}
  assert len(shapes) == 1


def test_no_task_reads_files(monkeypatch):
  """Data, init and losses are generated: any open() during them fails the test."""
  def refuse(*args, **kwargs):
    raise AssertionError(f"file access during task generation: {args[:1]}")
  # Each samples its inner task's data and init too; the MLP families draw their structure.
  every = problems.nets_problems() + problems.netfam_problems()
  monkeypatch.setattr(builtins, "open", refuse)
  monkeypatch.setattr(io, "open", refuse)
  monkeypatch.setattr(os, "open", refuse)
  for problem in every:
    data = problem.sample_data(1)
    problem.initial_params(2, data)
    problem.instance_info(1)
  problem = problems.get(f"aug({REPRESENTATIVE[1]})")
  data = problem.sample_data(3)
  assert np.isfinite(float(problem.full_loss(problem.initial_params(4, data), data)))


def test_every_structure_has_a_finite_loss_and_gradient():
  """Eagerly, one instance each: finite loss, finite and non-zero gradients."""
  for problem in NETS:
    data = problem.sample_data(0)
    loss, grads = problem.gradients(problem.init_params(0), data, tf.constant([1, 2]))
    assert np.isfinite(float(loss)) and float(loss) > 0, problem.name
    assert all(np.all(np.isfinite(g.numpy())) for g in grads), problem.name
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in grads) > 0, problem.name


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_adam_trains_a_representative_of_each_axis(name):
  before, after = adam_losses(problems.get(name), steps=200)
  assert np.isfinite(after) and after < 0.9 * before, (before, after)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_adam_trains_every_structure(name):
  before, after = adam_losses(problems.get(name))
  assert np.isfinite(after) and after < 0.9 * before, (before, after)


# --- augmentation ----------------------------------------------------------------------------

def _forced(inner, level, **kwargs):
  return augment.Augmented(inner, levels=(level,), level_weights=(1,), **kwargs)


def test_augmentation_changes_gradient_scales_but_not_the_minimiser():
  inner = Quadratic(20)
  problem = _forced(inner, "parameter", loss_scale_probability=1.0, noise_probability=0.0)
  data = problem.sample_data(3)
  inner_data = inner.sample_data(3)
  scales, loss_scale = problem.scales_of(data), float(data["augment/loss_scale"])
  assert np.std(np.log(scales[0])) > 1.0 and loss_scale != 1.0

  # The minimiser, mapped back, is the task's own; the augmented loss there is its minimum.
  minimiser = problem.minimizer(data)
  np.testing.assert_allclose(problem.to_inner(minimiser, data)[0],
                             inner.minimizer(inner_data)[0], rtol=1e-5)
  assert abs(float(problem.full_loss(minimiser, data))) < 1e-3 * loss_scale

  # Same point, two coordinate systems: loss c*f, gradient c*s*grad f.
  theta = inner.init_params(9)
  stored = [(theta[0] / scales[0]).astype(np.float32)]
  np.testing.assert_allclose(float(problem.full_loss(stored, data)),
                             loss_scale * float(inner.full_loss(theta, inner_data)), rtol=1e-4)
  _, seen = problem.gradients(stored, data, tf.constant([1, 1]))
  _, true = inner.gradients(theta, inner_data, tf.constant([1, 1]))
  np.testing.assert_allclose(seen[0].numpy(), loss_scale * scales[0] * true[0].numpy(),
                             rtol=1e-3, atol=1e-6 * np.abs(seen[0].numpy()).max())
  ratio = np.abs(seen[0].numpy()) / (np.abs(true[0].numpy()) + 1e-30)
  assert ratio.max() / ratio.min() > 10.0   # the optimizer sees very different scales


def test_augmentation_init_round_trip():
  inner = problems.get(REPRESENTATIVE[0])
  problem = _forced(inner, "tensor")
  data = problem.sample_data(11)
  for seed in (11, 12):   # the trainer's init seed differs from the data seed
    stored = problem.initial_params(seed, data)
    for back, theta in zip(problem.to_inner(stored, data), inner.init_params(seed)):
      np.testing.assert_allclose(back, theta, rtol=1e-5, atol=1e-30)
  assert _equal(problem.init_params(11), problem.initial_params(11, data))
  # Same point in both coordinates: same inner loss (times c).
  stored = problem.initial_params(12, data)
  np.testing.assert_allclose(
      float(problem.full_loss(stored, data)),
      float(data["augment/loss_scale"]) * float(inner.full_loss(inner.init_params(12),
                                                                inner.sample_data(11))),
      rtol=1e-4)


def test_augmentation_levels_loss_scale_and_noise_are_drawn():
  problem = augment.Augmented(problems.get(REPRESENTATIVE[1]))
  draws = [problem.draw(seed) for seed in range(60)]
  levels = collections.Counter(d["level"] for d in draws)
  assert set(levels) == set(augment.LEVELS)
  for d in draws:
    scales = d["scales"]
    spread_within = max(float(np.ptp(s)) for s in scales)
    values = {float(s.flat[0]) for s in scales}
    if d["level"] == "none":
      assert values == {1.0}
    elif d["level"] == "global":
      assert len(values) == 1 and spread_within == 0.0
    elif d["level"] == "tensor":
      assert len(values) == len(scales) and spread_within == 0.0
    else:
      assert spread_within > 0.0
  assert {d["loss_scale"] == 1.0 for d in draws} == {True, False}
  assert {d["gradient_noise"] == 0.0 for d in draws} == {True, False}


def test_augmentation_gradient_noise_is_relative_and_seeded():
  inner = Quadratic(20)
  quiet = _forced(inner, "none", loss_scale_probability=0.0, noise_probability=0.0)
  noisy = _forced(inner, "none", loss_scale_probability=0.0, noise_probability=1.0,
                  noise_range=(0.5, 0.5))
  params = inner.init_params(2)
  clean = quiet.gradients(params, quiet.sample_data(2), tf.constant([4, 4]))[1][0].numpy()
  data = noisy.sample_data(2)
  once = noisy.gradients(params, data, tf.constant([4, 4]))[1][0].numpy()
  again = noisy.gradients(params, data, tf.constant([4, 4]))[1][0].numpy()
  other = noisy.gradients(params, data, tf.constant([4, 5]))[1][0].numpy()
  np.testing.assert_array_equal(once, again)
  assert not np.array_equal(once, other)
  relative = np.sqrt(np.mean((once - clean)**2) / np.mean(clean**2))
  assert 0.3 < relative < 0.7


def test_augmented_problem_in_the_unroll_uses_the_instance_init():
  """meta/unroll.start_carry initialises through initial_params(init_seed, data)."""
  from learned_opt import config as config_lib
  from learned_opt import hrnn
  from meta import unroll as unroll_lib
  config = config_lib.paper()
  problem = _forced(Quadratic(20), "parameter")
  data = unroll_lib.data_tensors(problem.sample_data(1))
  carry = unroll_lib.start_carry(problem, hrnn.MetaParams(config).as_dict(), config, data, 7,
                                 [7, 1])
  np.testing.assert_allclose(problem.to_inner([p.numpy() for p in carry.params], data)[0],
                             Quadratic(20).init_params(7)[0], rtol=1e-5)


# --- problem sets ----------------------------------------------------------------------------

def test_problem_sets():
  paper, weights = trainer_lib.resolve_problem_set("paper")
  assert len(paper) == problems.DEFAULT_COUNT and weights is None
  assert trainer_lib.resolve_problems("default") == paper
  nets, weights = trainer_lib.resolve_problem_set("nets")
  assert weights is None and len(nets) == len(NETS)
  assert all(isinstance(p, augment.Augmented) for p in nets)
  for spec, ratio in (("mix", 0.5), ("mix:0.7", 0.7), ("mix:0.05", 0.05)):
    pool, weights = trainer_lib.resolve_problem_set(spec)
    assert pool == paper + nets and len(weights) == len(pool)
    assert abs(weights.sum() - 1.0) < 1e-12
    assert abs(weights[len(paper):].sum() - ratio) < 1e-12


@pytest.mark.parametrize("spec", ["mix:1.5", "mix:0", "mix:abc", "mix:"])
def test_bad_mix_ratio_is_refused(spec, tmp_path):
  with pytest.raises(ValueError, match="mix:R"):
    trainer_lib.Options(train_dir=str(tmp_path / "x"), problems=spec).validate()
  assert not (tmp_path / "x").exists()


def test_mix_sampler_draws_nets_at_the_stated_ratio():
  options = trainer_lib.Options(train_dir="unused", problems="mix:0.7", seed=3)
  pool, weights = trainer_lib.resolve_problem_set(options.problems)
  sampler = trainer_lib.Sampler(options, pool, 1, weights)
  draws = [sampler.next_trajectory(None).problem for _ in range(3000)]
  fraction = np.mean([name.startswith("aug(net_") for name in draws])
  assert abs(fraction - 0.7) < 0.03
  # Uniform sets keep drawing exactly as before (checkpointed runs resume bit-exactly).
  rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
  assert [problems.sample(rng_a, pool).name for _ in range(20)] == \
      [pool[int(rng_b.integers(len(pool)))].name for _ in range(20)]


def test_listing_shows_axes_and_samples(capsys):
  assert problems_cli.main(["--list", "--nets", "--samples", "3"]) == 0
  out = capsys.readouterr().out
  assert f"{len(NETS)} structures" in out
  for axis in net_tasks.AXES:
    assert f"  {axis}" in out
  sampled = [line for line in out.splitlines() if line.startswith("  aug(net_")]
  assert len(sampled) == 3 and all("augment=" in line for line in sampled)
  assert problems_cli.nets_listing(3) == problems_cli.nets_listing(3)


# --- train_meta.py ---------------------------------------------------------------------------

def _run_script(args, timeout=900):
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, str(REPO / "train_meta.py")] + args, cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=timeout)
  return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["nets", "mix:0.7", "netfam"])
def test_train_meta_runs_resumes_and_exports(spec, tmp_path):
  from learned_opt import weights as weights_lib
  # One trajectory of 5 partial unrolls: one problem, compiled once per process.
  common = ["--train_dir", str(tmp_path / "run"), "--problems", spec, "--min_unroll_steps",
            "5", "--unroll_steps_scale", "3", "--max_unroll_steps", "16",
            "--num_unrolls_scale", "0", "--min_num_unrolls", "5",
            "--checkpoint_every_secs", "0", "--seed", "4"]
  code, output = _run_script(common + ["--max_steps", "3"])
  assert code == 0, output
  code, output = _run_script(common + ["--max_steps", "5", "--export",
                                       str(tmp_path / "w.npz")])
  assert code == 0, output
  assert "restored" in output and "meta-step 3" in output
  rows = (tmp_path / "run" / "history.csv").read_text().splitlines()
  assert len(rows) == 1 + 5
  loaded = weights_lib.load(tmp_path / "w.npz")
  assert loaded.provenance["meta_steps"] == 5
  assert loaded.provenance["options"]["problems"] == spec
