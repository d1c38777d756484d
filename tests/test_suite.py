"""Tests of the optimizer benchmark (benchmarks/suite.py, benchmarks/keras_tasks.py), the
validation suite (meta/validation.py, train_meta.py --validate_every) and of the separation
of the three sets: benchmark, validation, meta-training (issue 17).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os

import numpy as np
import pytest

import problems
from benchmarks import keras_tasks
from benchmarks import suite
from learned_opt import config as config_lib
from learned_opt import hrnn
from learned_opt import weights as weights_lib
from meta import trainer as trainer_lib
from meta import validation

NAN, INF = float("nan"), float("inf")


# ---- metrics on hand-made curves --------------------------------------------------------------

def _run(losses, steps=None, seconds=1.0, label="x", session="s1"):
  steps = steps or [10 * i for i in range(len(losses))]
  return {"optimizer": label, "steps": steps, "losses": losses, "final_loss": losses[-1],
          "test_metric": 0.5, "test_metric_name": "accuracy",
          "diverged": suite.divergence(losses), "wall_seconds": seconds, "cpu_seconds": seconds,
          "timing": {"session": session}}


@pytest.mark.parametrize("target, expected", [
    (0.2, 20), (0.3, 20), (1.0, 0), (0.05, None), (NAN, None), (INF, None)])
def test_steps_to_reach(target, expected):
  assert suite.steps_to_reach([0, 10, 20, 30], [1.0, 0.5, 0.2, 0.1], target) == expected


def test_steps_to_reach_skips_non_finite():
  assert suite.steps_to_reach([0, 10, 20], [1.0, NAN, 0.1], 0.5) == 20


@pytest.mark.parametrize("learned, expected", [
    ([1.0, 0.5, 0.2, 0.1, 0.05], 40 / 20),   # reaches Adam's final 0.2 at step 20: 2x
    ([1.0, 0.8, 0.6, 0.4, 0.2], 1.0),        # at the same step
    ([1.0, 0.9, 0.8, 0.7, 0.3], 0.0),        # never
    ([1.0, NAN, NAN, NAN, NAN], 0.0),        # diverged
    ([0.1, 0.1, 0.1, 0.1, 0.1], 40 / 10),    # at step 0: counts as one curve interval
])
def test_speedup(learned, expected):
  adam = _run([1.0, 0.8, 0.6, 0.4, 0.2])
  assert suite.speedup(adam, _run(learned)) == pytest.approx(expected)


def test_speedup_uses_the_first_step_adam_reaches_its_final_loss():
  adam = _run([1.0, 0.2, 0.3, 0.25, 0.2])   # reached its final loss at step 10 already
  assert suite.speedup(adam, _run([1.0, 0.5, 0.2, 0.1, 0.1])) == pytest.approx(0.5)


@pytest.mark.parametrize("losses, diverged", [
    ([2.0, 1.0, 0.5], False),
    ([2.0, 50.0, 0.5], False),     # a spike that recovers is not a divergence
    ([2.0, 1.0, 2.5], True),       # ends above the initial loss
    ([2.0, 1.0, NAN], True),
    ([2.0, INF, 1.0], True),
    ([], False),
])
def test_divergence(losses, diverged):
  assert bool(suite.divergence(losses)) == diverged


@pytest.mark.parametrize("losses, blew_up", [
    ([4.6, 2.4, 1.2, 1.2, 3.5, 2.4], True),        # the GRU LM: falls apart, recovers partly
    ([4.6, 2.4, 1.2, 1.2, 2.8, 1.0], False),       # gives back less than half
    ([2.3, 10.8, 16.8, 2.0, 0.1, 0.01], False),    # rises before any progress (BatchNorm)
    ([2.3, 2.0, 2.3, 1.0, 0.5], False),            # best 2.0 is not yet half the initial
    ([0.7, 1e-6, 1e-4, 1e-6], False),              # a 100x jump at interpolation
    ([0.7, 0.01, 1.47, 0.02], True),               # a spike past the initial loss
    ([2.0, 1.0, NAN], False),                      # non-finite: a divergence, not a blow-up
    ([0.0, 0.0, 0.0], False),                      # no progress to give back
    ([-1.0, -2.0, -1.0], False),                   # not a loss that halves
    ([], False),
])
def test_blow_up(losses, blew_up):
  assert bool(suite.blow_up(losses)) == blew_up


def test_iqm():
  assert suite.iqm([1, 2, 3, 4]) == pytest.approx(2.5)              # middle two
  assert suite.iqm([100, 1, 2, 3, 4, 5, 6, -50]) == pytest.approx(3.5)  # outliers cut
  assert suite.iqm([1.0, 2.0, INF, INF, INF, INF, INF, INF]) == INF
  assert suite.iqm([1.0, 2.0, 3.0, INF]) == pytest.approx(2.5)
  assert math.isnan(suite.iqm([]))
  assert suite.iqm([1.0, NAN, 3.0]) == pytest.approx(2.0)


def test_task_and_overall_summary():
  def task(learned, adam_final, tuned_final):
    runs = {suite.REFERENCE: _run([1.0, 0.5, adam_final], seconds=2.0, label=suite.REFERENCE),
            "Adam(0.01)": _run([1.0, 0.5, tuned_final], label="Adam(0.01)"),
            "Adam(0.001)": _run([1.0, 0.6, 0.4], label="Adam(0.001)"),
            suite.UNTRAINED: _run([1.0, 0.9, 0.8], label=suite.UNTRAINED),
            "learned:x": _run(learned, seconds=3.0, label="learned:x")}
    return {"runs": runs, "summary": suite.task_summary(runs, ["learned:x"])}
  tasks = {"a": task([1.0, 0.1, 0.05], 0.2, 0.1),     # beats everyone
           "b": task([1.0, 0.7, 0.6], 0.2, 0.1),      # loses to the Adams, beats untrained
           "c": task([1.0, NAN, NAN], 0.3, 0.3),      # diverges
           "d": task([1.0, 0.1, 0.9, 0.3], 0.3, 0.3)} # blows up
  a = tasks["a"]["summary"]
  assert a["tuned_adam"] == "Adam(0.01)"
  assert a["learned"]["learned:x"]["normalised_loss"] == pytest.approx(0.5)
  assert a["learned"]["learned:x"]["speedup"] == pytest.approx(2.0)
  assert a["learned"]["learned:x"]["wall_ratio"] == pytest.approx(1.5)
  # Timed by different processes (another machine, another load): no ratio.
  runs = dict(tasks["a"]["runs"], **{"learned:x": _run([1.0, 0.1], seconds=3.0, session="s2")})
  apart = suite.task_summary(runs, ["learned:x"])["learned"]["learned:x"]
  assert apart["wall_ratio"] is None and apart["cpu_ratio"] is None
  legacy = {k: v for k, v in runs["learned:x"].items() if k != "timing"}   # old cache entry
  assert not suite.timed_together(legacy, legacy)
  overall = suite.overall_summary(tasks, ["learned:x"])["learned:x"]
  assert overall["wins"][suite.REFERENCE] == 1
  assert overall["wins"][suite.TUNED] == 1
  assert overall["wins"][suite.UNTRAINED] == 3
  assert overall["tasks_compared"][suite.REFERENCE] == 4
  assert overall["divergences"] == ["c"] and overall["blow_ups"] == ["d"]
  assert tasks["d"]["summary"]["learned"]["learned:x"]["blew_up"].startswith("loss 0.9")
  # normalised losses 0.5, 1, 6, inf: the middle two after cutting one each side
  assert overall["iqm_normalised_loss"] == pytest.approx(3.5)
  # Baselines are counted too.
  tasks["b"]["runs"]["Adam(0.001)"] = _run([1.0, 0.2, 0.8], label="Adam(0.001)")
  everyone = suite.overall_summary(tasks, ["learned:x"])
  assert everyone["baseline_blow_ups"] == {"Adam(0.001)": ["b"]}


# ---- the cache --------------------------------------------------------------------------------

def test_cache_key_changes_with_everything_a_run_depends_on(monkeypatch):
  task = keras_tasks.get("regression_linnerud")
  data = keras_tasks.Data(*([np.zeros(1)] * 4))
  spec = suite.adam(2e-3)
  base = suite.cache_key(task, data, spec, 0, 100, 10)
  variants = {
      "version": suite.cache_key(keras_tasks.dataclasses.replace(task, version=2), data, spec,
                                 0, 100, 10),
      "seed": suite.cache_key(task, data, spec, 1, 100, 10),
      "steps": suite.cache_key(task, data, spec, 0, 200, 10),
      "points": suite.cache_key(task, data, spec, 0, 100, 20),
      "optimizer": suite.cache_key(task, data, suite.adam(1e-3), 0, 100, 10),
      "identity": suite.cache_key(task, data, suite.OptimizerSpec(
          spec.label, spec.make, "w123"), 0, 100, 10),
      "data": suite.cache_key(task, keras_tasks.Data(*([np.zeros(1)] * 4), "abc"), spec,
                              0, 100, 10),
  }
  monkeypatch.setattr(suite.tf, "__version__", "9.9.9")
  variants["tensorflow"] = suite.cache_key(task, data, spec, 0, 100, 10)
  assert len({base, *variants.values()}) == len(variants) + 1
  assert "/" not in base and " " not in base


def test_learned_cache_identity_names_the_weights_file(tmp_path):
  default = suite.learned_spec("default")
  config = config_lib.get("stable")
  other = weights_lib.save(tmp_path / "other.npz", hrnn.init_meta_params(config, 3), config)
  spec = suite.learned_spec(str(other))
  assert spec.label == "learned:other"
  assert spec.identity != default.identity and spec.identity.startswith("w")


def test_cache_roundtrip_keeps_non_finite(tmp_path):
  run = _run([1.0, NAN])
  suite.cache_store(str(tmp_path), "k", run)
  back = suite.cache_load(str(tmp_path), "k")
  assert math.isnan(back["final_loss"]) and back["steps"] == run["steps"]
  assert suite.cache_load(str(tmp_path), "missing") is None
  assert suite.cache_load(None, "k") is None


def test_curve_layout():
  assert suite.curve_layout(2000, 40) == (40, 50, 25)
  assert suite.curve_layout(600, 40) == (40, 15, 15)
  assert suite.curve_layout(7, 40) == (7, 1, 1)
  epochs, per_epoch, per_execution = suite.curve_layout(10000, 40)
  assert epochs * per_epoch == 10000 and per_epoch % per_execution == 0


def test_batch_order_is_reshuffled_epochs():
  order = suite.batch_order(10, 4, 5, seed=0)
  assert order.shape == (5, 4)
  assert sorted(order.reshape(-1)[:10]) == list(range(10))   # the first epoch is a permutation
  np.testing.assert_array_equal(order, suite.batch_order(10, 4, 5, seed=0))


# ---- the task set -----------------------------------------------------------------------------

def test_task_set_covers_what_the_issue_asks():
  tasks = list(keras_tasks.TASKS.values())
  assert len(tasks) >= 20
  archs = {t.architecture for t in tasks}
  assert {"mlp8_tanh", "convnet_bn", "embedding_bag", "gru_lm", "transformer_lm",
          "autoencoder", "linear"} <= archs
  assert any(a.endswith("_regression") for a in archs)
  for activation in ("relu", "tanh", "sigmoid", "gelu"):
    assert any(a.startswith("mlp") and activation in a for a in archs), activation
  assert sum(t.steps >= 10000 for t in tasks) >= 3
  assert min(t.batch_size for t in tasks) <= 8 and max(t.batch_size for t in tasks) >= 1024
  assert any(t.mixed_precision for t in tasks)
  assert {"sklearn:diabetes", "sklearn:iris", "sklearn:wine", "sklearn:linnerud",
          "sklearn:digits", "sklearn:breast_cancer"} <= {t.data_source for t in tasks}
  assert any(t.data_source.startswith("text:") for t in tasks)


def test_wide_net_has_a_million_parameters():
  task = keras_tasks.get("wide_mlp_digits")
  data = task.data(0)
  assert task.model(data).count_params() >= 1_000_000


@pytest.mark.parametrize("loader", [keras_tasks.license_text, keras_tasks.descr_text])
def test_packaged_texts_load(loader):
  data = loader(0)
  assert data.x_train.shape[1] == data.y_train.shape[1] and len(data.x_train) > 500
  assert data.x_train.max() < keras_tasks.VOCAB and len(data.source_hash) == 16
  np.testing.assert_array_equal(data.x_train[0, 1:], data.y_train[0, :-1])


def test_unknown_task_is_named():
  with pytest.raises(ValueError, match="no_such_task"):
    suite.run(suite.Options(tasks=["no_such_task"], cache=None))


# ---- the separation of the three sets ---------------------------------------------------------

# Kinds of generated data that meta-training uses or will use (issue 17): neither the
# benchmark nor the validation suite may generate these.
META_TRAINING_KINDS = ("teacher", "mixture", "gaussian", "manifold", "sequence", "blob",
                       "texture", "stroke", "random_mlp", "quadratic", "bowl")


def problem_tags(problem) -> tuple[str, str]:
  """(data_source, architecture) of a Problem: its declared tags, else its class name (so that
  a new meta-training family is picked up without declaring anything)."""
  kind = type(problem).__name__.lower()
  inner = getattr(problem, "inner", None)         # transforms wrap a problem
  if inner is not None and not hasattr(problem, "data_source"):
    return problem_tags(inner)
  return (getattr(problem, "data_source", f"generated:{kind}"),
          getattr(problem, "architecture", kind))


def test_benchmark_validation_and_meta_training_do_not_overlap():
  benchmark = {(t.data_source, t.architecture) for t in keras_tasks.TASKS.values()}
  validation_tags = {problem_tags(p) for p in validation.suite()}
  meta_training = {problem_tags(p) for p in problems.all_problems()}
  benchmark_sources = {s for s, _ in benchmark}
  validation_sources = {s for s, _ in validation_tags}
  meta_sources = {s for s, _ in meta_training}
  assert not benchmark_sources & validation_sources
  assert not benchmark_sources & meta_sources
  assert not validation_sources & meta_sources
  assert not benchmark & (validation_tags | meta_training)
  generated = [s for s in benchmark_sources | validation_sources if s.startswith("generated:")]
  for source in generated:
    assert not any(word in source for word in META_TRAINING_KINDS), source
  # Validation names do not collide with meta-training problem names either.
  assert not {p.name for p in validation.suite()} & {p.name for p in problems.all_problems()}


def test_overlap_test_would_catch_a_shared_source():
  class Leaky(problems.Problem):
    data_source, architecture = "sklearn:digits", "mlp2_relu"
  leaky = Leaky("leaky", family=problems.FAMILIES[0])
  assert problem_tags(leaky) in {(t.data_source, t.architecture)
                                 for t in keras_tasks.TASKS.values()}


# ---- validation suite -------------------------------------------------------------------------

def test_validation_suite_has_generated_tasks_deep_ones_included():
  tasks = validation.suite()
  assert len(tasks) == 14 and len({t.name for t in tasks}) == len(tasks)
  depths = sorted(len(t.hidden) for t in tasks if isinstance(t, validation.NetProblem))
  assert depths[-4:] == [4, 6, 8, 8]   # version 2's deep networks
  for task in tasks:
    data = task.sample_data(validation.DATA_SEED)
    assert all(np.isfinite(v).all() for v in data.values())
    loss = float(task.full_loss(task.init_params(validation.INIT_SEED), data))
    assert math.isfinite(loss) and loss > 0, task.name


def test_log_ratio_caps_and_penalises():
  cap = math.log(validation.PENALTY_RATIO)
  assert validation.log_ratio(0.5, 1.0) == pytest.approx(math.log(0.5))
  assert validation.log_ratio(NAN, 1.0) == pytest.approx(cap)
  assert validation.log_ratio(1e9, 1.0) == pytest.approx(cap)
  assert validation.log_ratio(0.0, 1.0) == pytest.approx(-cap)


def test_select_names_unknown_tasks():
  assert [p.name for p in validation.select("val_sine_mlp2_tanh")] == ["val_sine_mlp2_tanh"]
  with pytest.raises(ValueError, match="val_nope"):
    validation.select("val_nope")
  assert [p.name for p in validation.select("v1")] == [p.name for p in validation.suite()[:10]]
  names = lambda spec: [p.name for p in validation.select(spec)]
  assert names("v2") == names("") and len(names("")) == 14
  assert all(len(getattr(p, "hidden", ())) <= 2 for p in validation.select("v1"))


@pytest.mark.slow
def test_validator_scores_and_caches_references(tmp_path, monkeypatch):
  config = config_lib.get("stable")
  tasks = validation.select("val_sine_mlp2_tanh,val_sparse_linear_system_120x60")
  validator = validation.Validator(config, tmp_path, steps=20, problems=tasks)
  cached = json.loads((tmp_path / validation.REFERENCE_FILE).read_text())
  assert set(cached) == {f"{t.name}@20" for t in tasks}
  # Adam's reference really trains: below the initial loss.
  sine = tasks[0]
  data = sine.sample_data(validation.DATA_SEED)
  initial = float(sine.full_loss(sine.init_params(validation.INIT_SEED), data))
  assert validator.references[sine.name] < initial
  result = validator(hrnn.init_meta_params(config, 0))
  ratios = [t["log_ratio"] for t in result["tasks"].values()]
  assert result["score"] == pytest.approx(np.mean(ratios))
  assert all(math.isfinite(r) for r in ratios)
  # A second validator on the same run dir reads the references instead of recomputing.
  monkeypatch.setattr(validation, "adam_final_loss",
                      lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
  again = validation.Validator(config, tmp_path, steps=20, problems=tasks)
  assert again.references == validator.references


def test_train_meta_validates_and_keeps_best(tmp_path, monkeypatch):
  options = trainer_lib.Options(
      train_dir=str(tmp_path / "run"), config="stable", problems="quadratic_d25", max_steps=4,
      min_unroll_steps=5, unroll_steps_scale=0, max_unroll_steps=8, num_unrolls_scale=1,
      checkpoint_every_secs=0, validate_every=2, validation_steps=10,
      validation_tasks="val_sine_mlp2_tanh")
  trainer_lib.Trainer(options).run()
  run = tmp_path / "run"
  best = run / "exports" / "best.npz"
  assert best.exists()
  record = json.loads((run / "exports" / "best.json").read_text())
  with open(run / "history.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  scores = {int(r["step"]): r["validation_score"] for r in rows}
  assert scores[1] == "" and scores[3] == ""
  assert math.isfinite(float(scores[2])) and math.isfinite(float(scores[4]))  # steps 2, 4
  assert record["score"] == pytest.approx(min(float(scores[2]), float(scores[4])))
  assert record["meta_step"] in (2, 4)
  loaded = weights_lib.load(str(best))
  assert loaded.provenance["validation"]["score"] == pytest.approx(record["score"])
  # The long-horizon guard ran on the new best (default: 10 x validation_steps = 100 steps).
  assert record["guard"]["passed"] and record["guard"]["steps"] == 100
  assert set(record["guard"]["tasks"]) == set(validation.GUARD_TASKS)
  guard_lines = (run / "exports" / validation.GUARD_LOG).read_text().splitlines()
  assert [json.loads(line)["meta_step"] for line in guard_lines] == [record["meta_step"]]
  task = record["tasks"]["val_sine_mlp2_tanh"]
  assert task["log_ratio"] == pytest.approx(math.log(task["learned"] / task["adam"]))
  # The Adam reference is cached in the run directory: a resumed run does not recompute it.
  monkeypatch.setattr(validation, "adam_final_loss",
                      lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
  again = validation.Validator(config_lib.get("stable"), run, steps=10,
                               problems=validation.select("val_sine_mlp2_tanh"))
  assert again.references["val_sine_mlp2_tanh"] == pytest.approx(task["adam"])


def test_best_scored_on_another_suite_is_kept_not_compared(tmp_path):
  """A run resumed under a changed validation suite (other tasks or steps) does not compare
  scores across suites: the old best.npz/json move to an archived name, a new best starts."""
  options = dict(train_dir=str(tmp_path / "run"), config="stable", problems="quadratic_d25",
                 min_unroll_steps=5, unroll_steps_scale=0, max_unroll_steps=8,
                 num_unrolls_scale=1, checkpoint_every_secs=0, validate_every=2,
                 validation_steps=10, validation_tasks="val_sine_mlp2_tanh")
  trainer_lib.Trainer(trainer_lib.Options(max_steps=2, **options)).run()
  exports = tmp_path / "run" / "exports"
  first = (exports / "best.npz").read_bytes()
  old = json.loads((exports / "best.json").read_text())
  # Fake a much better old score: without the suite check, nothing could ever beat it.
  old["score"] = -1e9
  (exports / "best.json").write_text(json.dumps(old))
  options["validation_tasks"] = "val_sine_mlp2_tanh,val_polynomial_mlp1_relu"
  trainer_lib.Trainer(trainer_lib.Options(max_steps=4, **options)).run()
  archived = exports / "best_1tasks_10steps_guard100"
  assert archived.with_suffix(".npz").read_bytes() == first
  assert json.loads(archived.with_suffix(".json").read_text())["score"] == -1e9
  record = json.loads((exports / "best.json").read_text())
  assert set(record["tasks"]) == {"val_sine_mlp2_tanh", "val_polynomial_mlp1_relu"}
  assert record["meta_step"] == 4 and math.isfinite(record["score"])
  assert not validation.comparable(old, record["tasks"], 10, 100)
  assert validation.comparable(record, record["tasks"], 10, 100)
  assert not validation.comparable(record, record["tasks"], 20, 100)


class _ScriptedUnroller:
  """Stands in for the Unroller: returns scripted (loss, mean log step length) per call."""

  def __init__(self, losses, log_lrs, finite=None):
    self.script = list(zip(losses, log_lrs, finite or [True] * len(losses)))
    self.calls = []

  def __call__(self, problem, meta, carry, data, steps, seed, compute_gradients=True):
    import types
    loss, log_lr, finite = self.script[len(self.calls)]
    self.calls.append((steps, tuple(seed), compute_gradients))
    return types.SimpleNamespace(finite=finite, steps=steps, final_loss=loss,
                                 log_lr_mean=log_lr, carry=carry)


@pytest.mark.parametrize("losses, log_lrs, finite, spike, drift, passes", [
    ([1.0, 0.5, 0.2, 0.1], [-7.0, -7.2, -7.5, -8.0], None, 0.5, -0.2, True),    # steady descent
    ([1.0, 0.01, 0.2, 0.01], [-7.0, -7.0, -7.0, -7.0], None, 20.0, 0.0, False),  # a 20x spike
    ([1.0, 0.5, 0.2, 0.1], [-7.0, -6.0, -5.0, -4.0], None, 0.5, 3.0, False),   # climbing step
    ([1.0, 0.5, 0.2, 0.1], [-7.0, -7.0, -7.0, -7.0], [True, False, True, True], 1.0, 0.0,
     False),                                                                  # non-finite
])
def test_long_horizon_run_reads_spikes_and_drift(losses, log_lrs, finite, spike, drift, passes):
  config = config_lib.lean()
  problem = validation.select("val_sine_mlp2_tanh")[0]
  data = validation.instance_data([problem])[problem.name]
  unroller = _ScriptedUnroller(losses, log_lrs, finite)
  run = validation.long_horizon_run(problem, hrnn.init_meta_params(config, 0), config, data,
                                    steps=40, unroller=unroller, chunk=10)
  assert validation.run_passes(run) is passes
  if finite is None:
    assert run["spike"] == pytest.approx(spike) and run["drift"] == pytest.approx(drift)
    assert run["losses"] == losses and len(unroller.calls) == 4
  else:
    assert not run["finite"] and len(unroller.calls) == 2   # stops at the first blow-up
  # Forward only, 10 steps a call, a different minibatch seed for every chunk.
  assert {c[0] for c in unroller.calls} == {10} and not any(c[2] for c in unroller.calls)
  assert len({c[1] for c in unroller.calls}) == len(unroller.calls)


def test_best_that_fails_the_guard_is_not_exported(tmp_path, monkeypatch):
  def failing(self, meta):
    tasks = {n: {"losses": [1.0, 50.0], "log_lr": [-7.0, -2.0], "finite": True,
                 "spike": 50.0, "drift": 5.0, "chunk": 10, "passed": False}
             for n in validation.GUARD_TASKS}
    return {"passed": False, "steps": self.steps, "tasks": tasks}
  monkeypatch.setattr(validation.LongHorizonGuard, "__call__", failing)
  options = trainer_lib.Options(
      train_dir=str(tmp_path / "run"), config="lean", problems="quadratic_d25", max_steps=2,
      min_unroll_steps=5, unroll_steps_scale=0, max_unroll_steps=8, num_unrolls_scale=1,
      checkpoint_every_secs=0, validate_every=2, validation_steps=10, guard_steps=30,
      validation_tasks="val_sine_mlp2_tanh")
  trainer_lib.Trainer(options).run()
  exports = tmp_path / "run" / "exports"
  assert not (exports / "best.npz").exists() and not (exports / "best.json").exists()
  [line] = (exports / validation.GUARD_LOG).read_text().splitlines()
  line = json.loads(line)
  assert line["meta_step"] == 2 and not line["passed"] and line["steps"] == 30
  assert "drift +5.00 > 2.30" in line["why"] and "spike x50" in line["why"]
  # A best chosen under another guard (or none) is not comparable: it is archived, not beaten.
  record = {"score": -1.0, "validation_steps": 10, "tasks": {"val_sine_mlp2_tanh": {}}}
  assert validation.comparable(record, record["tasks"], 10, 0)
  assert not validation.comparable(record, record["tasks"], 10, 30)
  assert validation.comparable({**record, "guard": {"steps": 30}}, record["tasks"], 10, 30)
  with pytest.raises(ValueError, match="--guard_steps"):
    trainer_lib.Options(train_dir=str(tmp_path), guard_steps=5).validate()


def test_validation_command_scores_weights_files(tmp_path, capsys):
  """python -m meta.validation: a row per weights spec, the score the Validator gives."""
  trainer = trainer_lib.Trainer(trainer_lib.Options(
      train_dir=str(tmp_path / "run"), config="lean", problems="quadratic_d25", max_steps=1,
      min_unroll_steps=5, unroll_steps_scale=0, max_unroll_steps=8, num_unrolls_scale=1,
      checkpoint_every_secs=0, export=str(tmp_path / "w.npz")))
  trainer.run()
  validation.main(["untrained:lean", str(tmp_path / "w.npz"), "--steps", "10",
                   "--tasks", "val_sine_mlp2_tanh", "--cache_dir", str(tmp_path)])
  rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
  assert rows[0].startswith("| weights | score | val_sine_mlp2_tanh")
  assert rows[1].startswith("| untrained:lean |") and rows[2].startswith(f"| {tmp_path}")
  expected = validation.Validator(config_lib.lean(), tmp_path, 10, validation.select(
      "val_sine_mlp2_tanh"))(hrnn.init_meta_params(config_lib.lean(), 0))["score"]
  assert rows[1].split("|")[2].strip() == f"{expected:+.3f}"
  with pytest.raises(FileNotFoundError):
    validation.main([str(tmp_path / "missing.npz"), "--steps", "10"])
  # --guard_steps adds the long-horizon table, one row per weights spec.
  validation.main(["untrained:lean", "--steps", "10", "--tasks", "val_sine_mlp2_tanh",
                   "--cache_dir", str(tmp_path), "--guard_steps", "20"])
  out = capsys.readouterr().out
  assert "long-horizon guard, 20 steps" in out
  assert any(line.startswith("| untrained:lean | yes |") for line in out.splitlines())


def test_validation_instances_rescore_on_fresh_draws(tmp_path, capsys):
  """--instances: instance 0 is the one meta-training selects on (unchanged); instance k > 0
  draws fresh data, init and minibatches; the mean table averages the per-instance scores."""
  assert validation.instance_seeds(0) == (validation.DATA_SEED, validation.INIT_SEED,
                                          validation.STEP_SEED)
  seeds = {validation.instance_seeds(k) for k in range(3)}
  assert len(seeds) == 3
  task = validation.select("val_sine_mlp2_tanh")
  first = validation.instance_data(task, 0)["val_sine_mlp2_tanh"]
  other = validation.instance_data(task, 1)["val_sine_mlp2_tanh"]
  assert not all(np.array_equal(first[k].numpy(), other[k].numpy()) for k in first)
  meta = hrnn.init_meta_params(config_lib.lean(), 0)
  per_instance = [validation.Validator(config_lib.lean(), tmp_path, 10, task, instance=k)(meta)
                  ["score"] for k in (0, 1)]
  assert per_instance[0] != per_instance[1]
  # The references of each instance are cached under their own keys.
  cached = json.loads((tmp_path / validation.REFERENCE_FILE).read_text())
  assert {"val_sine_mlp2_tanh@10", "val_sine_mlp2_tanh@10#1"} <= set(cached)
  validation.main(["untrained:lean", "--steps", "10", "--tasks", "val_sine_mlp2_tanh",
                   "--cache_dir", str(tmp_path), "--instances", "0,1"])
  out = capsys.readouterr().out
  assert "instance 0:" in out and "instance 1:" in out and "mean over instances 0,1" in out
  row = next(line for line in out.splitlines() if line.startswith("| untrained:lean |")
             and line.count("|") == 6)
  cells = [c.strip() for c in row.split("|")[2:-1]]
  assert cells[2:] == [f"{v:+.3f}" for v in per_instance]
  assert cells[0] == f"{np.mean(per_instance):+.3f}"
  with pytest.raises(SystemExit):
    validation.main(["untrained:lean", "--instances", "-1"])


def test_bad_validation_tasks_fail_up_front(tmp_path):
  options = trainer_lib.Options(train_dir=str(tmp_path), validate_every=5,
                                validation_tasks="val_nope")
  with pytest.raises(ValueError, match="val_nope"):
    options.validate()


# ---- a tiny end-to-end benchmark run ----------------------------------------------------------

def test_tiny_benchmark_run_writes_outputs_and_uses_the_cache(tmp_path, capsys):
  options = suite.Options(tasks=["regression_linnerud", "logreg_breast_cancer"],
                          baselines=[suite.REFERENCE], steps=8, curve_points=2,
                          jit_compile=False, cache=str(tmp_path / "cache"),
                          out=str(tmp_path / "out"))
  results = suite.run(options)
  out = capsys.readouterr().out
  assert out.count("] regression_linnerud") == 2 and "cached" not in out.split("\n\n")[0]
  for name in ("suite.md", "suite.json", "summary.png", "curves/regression_linnerud.png"):
    assert os.path.getsize(tmp_path / "out" / name) > 0
  task = results["tasks"]["regression_linnerud"]
  run = task["runs"]["learned:default"]
  assert run["steps"] == [0, 4, 8] and len(run["losses"]) == 3
  assert run["test_metric_name"] == "mse" and task["summary"]["learned"]["learned:default"]
  assert "learned:default" in open(tmp_path / "out" / "suite.md").read()
  assert len(os.listdir(tmp_path / "cache")) == 4
  # Second run: everything from the cache, same numbers.
  again = suite.run(options)
  out = capsys.readouterr().out
  assert sum(line.startswith("[") and line.endswith("cached")
             for line in out.splitlines()) == 4
  assert again["tasks"]["regression_linnerud"]["runs"]["learned:default"]["losses"] == \
      pytest.approx(run["losses"])
  assert again["tasks"]["regression_linnerud"]["summary"]["learned"]["learned:default"][
      "wall_ratio"] > 0   # both cached from one process: still side by side
  # A fresh learned run beside a reference cached by another process: with --retime_reference
  # the reference is re-run beside it, so the ratio compares runs timed together.
  def age(label):
    for name in os.listdir(tmp_path / "cache"):
      if name.startswith("regression_linnerud") and label in name:
        path = tmp_path / "cache" / name
        entry = json.load(open(path))
        if label == "Adam":
          entry["timing"]["session"] = "another-machine"
          json.dump(entry, open(path, "w"))
        else:
          os.remove(path)
  age("Adam"), age("learned")
  third = suite.run(options)
  out = capsys.readouterr().out
  fresh = [line for line in out.splitlines() if line.startswith("[") and "cached" not in line]
  assert len(fresh) == 2 and all("regression_linnerud" in line for line in fresh)
  summary = third["tasks"]["regression_linnerud"]["summary"]["learned"]["learned:default"]
  assert summary["wall_ratio"] > 0
  age("Adam"), age("learned")
  fourth = suite.run(dataclasses.replace(options, retime_reference=False))
  summary = fourth["tasks"]["regression_linnerud"]["summary"]["learned"]["learned:default"]
  assert summary["wall_ratio"] is None
  assert "not timed by one process" in open(tmp_path / "out" / "suite.md").read()
  # --resummarize recomputes the summaries from suite.json alone (no training, no cache).
  stored = json.load(open(tmp_path / "out" / "suite.json"))
  stored["summary"] = {}
  json.dump(stored, open(tmp_path / "out" / "suite.json", "w"))
  again = suite.resummarize(str(tmp_path / "out"))
  assert again["summary"]["learned:default"]["divergences"] == \
      fourth["summary"]["learned:default"]["divergences"]
  assert "blow-ups" in open(tmp_path / "out" / "suite.md").read()
  with pytest.raises(FileNotFoundError, match="no suite.json"):
    suite.resummarize(str(tmp_path / "nowhere"))
