"""eval_imagenet.py end to end on a tiny ImageNet built by tensorflow-datasets' own builder.

The fixture writes a fake ILSVRC2012_img_train.tar / ILSVRC2012_img_val.tar (a few small JPEGs
for three real synsets, plus one synset outside --num_classes) and prepares it with the real
`imagenet2012` builder through `--manual_dir`, so training reads genuine tfds TFRecords.

Fast tests run RMSProp on both networks (with an interrupted-and-resumed run), the CLI on
synthetic data, the data pipeline and every bad-input error. The learned optimizer costs ~2 us
per parameter per step on this CPU (about a minute per step for the 21-24M-parameter networks),
so its end-to-end runs are marked slow: `python -m pytest -m slow tests/test_eval_imagenet.py`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow as tf

import eval_imagenet
from experiments import imagenet_data
from experiments import imagenet_models
from experiments import imagenet_train
from experiments import plot_curves
from experiments import run_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 3
IMAGES_PER_CLASS = 4
OUTSIDE_CLASS = 7  # a synset whose label is >= NUM_CLASSES: filtered out by the pipeline


def _synsets() -> list[str]:
  # pylint: disable-next=import-outside-toplevel
  from tensorflow_datasets.datasets.imagenet2012 import imagenet_common
  with open(imagenet_common.label_names_file()) as f:
    return f.read().split()


def _jpeg(rng, label: int, height: int, width: int) -> bytes:
  colour = np.array([(label * 80) % 256, (label * 150 + 60) % 256, (label * 40 + 120) % 256])
  image = np.clip(colour + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)
  return tf.io.encode_jpeg(image).numpy()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_fake_ilsvrc2012(manual_dir: str, labels: list[int], images_per_class: int,
                          seed: int = 0) -> None:
  """ILSVRC2012_img_{train,val}.tar laid out as image-net.org ships them (train: one inner tar
  per synset), with small random JPEGs of assorted sizes."""
  os.makedirs(manual_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  synsets = _synsets()
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"), "w") as outer:
    for label in labels:
      inner_bytes = io.BytesIO()
      with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
        for i in range(images_per_class):
          size = (40 + 8 * (i % 3), 48 - 4 * (i % 2))
          _add(inner, f"{synsets[label]}_{i}.JPEG", _jpeg(rng, label, *size))
      _add(outer, f"{synsets[label]}.tar", inner_bytes.getvalue())
  # tfds reads the validation tar's names even for train-only use (see prepare_from_manual_dir).
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as val:
    for i in range(2):
      _add(val, f"ILSVRC2012_val_{i + 1:08d}.JPEG", _jpeg(rng, 0, 40, 40))


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory) -> str:
  root = tmp_path_factory.mktemp("imagenet")
  manual = str(root / "manual")
  write_fake_ilsvrc2012(manual, list(range(NUM_CLASSES)) + [OUTSIDE_CLASS], IMAGES_PER_CLASS)
  data_dir = str(root / "tfds")
  imagenet_data.prepare_from_manual_dir(data_dir, manual)
  return data_dir


def _config(train_dir, data_dir, **overrides) -> imagenet_train.RunConfig:
  base = dict(train_dir=str(train_dir), data_dir=data_dir, model="resnet50_v2", image_size=32,
              num_classes=NUM_CLASSES, global_batch_size=2, strategy="one_device",
              shuffle_buffer=8, train_steps=2, checkpoint_every=2, log_every=1)
  base.update(overrides)
  return imagenet_train.RunConfig(**base)


def _csv_steps(train_dir) -> list[int]:
  return run_files.read_losses(str(train_dir))["step"].tolist()


# ---- the data ---------------------------------------------------------------------------------


def test_fake_imagenet_is_prepared_by_the_real_tfds_builder(imagenet_dir):
  builder = imagenet_data.open_imagenet(imagenet_dir, NUM_CLASSES)
  assert builder.info.name == "imagenet2012"
  assert builder.info.splits["train"].num_examples == (NUM_CLASSES + 1) * IMAGES_PER_CLASS
  shards = [p for p in os.listdir(builder.data_dir) if "train.tfrecord" in p]
  assert shards, os.listdir(builder.data_dir)


def test_pipeline_crops_scales_filters_and_is_deterministic(imagenet_dir):
  builder = imagenet_data.open_imagenet(imagenet_dir, NUM_CLASSES)

  def batches(seed, n=6):
    dataset = imagenet_data.imagenet_train_dataset(
        builder, batch_size=4, image_size=36, num_classes=NUM_CLASSES, seed=seed,
        shuffle_buffer=16)
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(n)]

  first = batches(seed=1)
  images = np.concatenate([x for x, _ in first])
  labels = np.concatenate([y for _, y in first])
  assert images.shape == (24, 36, 36, 3) and images.dtype == np.float32
  assert images.min() >= -1.0 and images.max() <= 1.0 and images.std() > 0.1
  # 24 draws from 12 kept examples: all in range, and the outside class never appears.
  assert set(labels.tolist()) == set(range(NUM_CLASSES))
  again = batches(seed=1)
  for (x1, y1), (x2, y2) in zip(first, again):
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
  other = batches(seed=2)
  assert any(not np.array_equal(x1, x2) for (x1, _), (x2, _) in zip(first, other))


def test_pipeline_iterator_restores_exactly_from_a_checkpoint(imagenet_dir, tmp_path):
  builder = imagenet_data.open_imagenet(imagenet_dir, NUM_CLASSES)
  dataset = imagenet_data.imagenet_train_dataset(
      builder, batch_size=3, image_size=32, num_classes=NUM_CLASSES, seed=0, shuffle_buffer=16)
  iterator = iter(dataset)
  next(iterator)
  checkpoint = tf.train.Checkpoint(data=iterator)
  path = checkpoint.save(str(tmp_path / "it"))
  expected = [next(iterator)[0].numpy() for _ in range(3)]
  checkpoint.restore(path)
  for want in expected:
    np.testing.assert_array_equal(next(iterator)[0].numpy(), want)


def test_synthetic_data_is_learnable_and_in_range():
  dataset = imagenet_data.synthetic_dataset(batch_size=64, image_size=32, num_classes=4, seed=0)
  images, labels = next(iter(dataset))
  assert images.shape == (64, 32, 32, 3) and labels.shape == (64,)
  assert float(tf.reduce_min(images)) >= -1.0 and float(tf.reduce_max(images)) <= 1.0
  # Same-class images share a template: closer to each other than to other classes.
  means = [tf.reduce_mean(tf.boolean_mask(images, labels == c), axis=0) for c in range(4)]
  x0 = tf.boolean_mask(images, labels == 0)[0]
  distances = [float(tf.norm(x0 - m)) for m in means]
  assert int(np.argmin(distances)) == 0


# ---- the objective ----------------------------------------------------------------------------


def test_objective_uses_each_recipe():
  assert imagenet_models.MODELS["inception_v3"].label_smoothing == 0.1
  assert imagenet_models.MODELS["inception_v3"].weight_decay == 4e-5
  assert imagenet_models.MODELS["resnet50_v2"].weight_decay == 1e-4
  kernels = [tf.constant([[1.0, 2.0]]), tf.constant([3.0])]
  # wd * sum ||W||^2 / 2 = 0.1 * (1 + 4 + 9) / 2
  assert float(imagenet_models.l2_penalty(kernels, 0.1)) == pytest.approx(0.7)
  logits = tf.constant([[0.0, 0.0, 0.0]])
  ce = imagenet_models.cross_entropy(tf.constant([0]), logits, 3, label_smoothing=0.1)
  assert float(ce[0]) == pytest.approx(np.log(3.0), rel=1e-6)


def test_rmsprop_baseline_has_the_inception_v3_settings(tmp_path):
  config = _config(tmp_path, None, synthetic=True, optimizer="rmsprop",
                   global_batch_size=256).resolved()
  assert config.scaled_learning_rate() == pytest.approx(0.045 * 256 / 32)
  optimizer = imagenet_train.make_optimizer(config, steps_per_epoch=100)
  assert isinstance(optimizer, tf.keras.optimizers.RMSprop)
  assert (optimizer.rho, optimizer.momentum, optimizer.epsilon) == (0.9, 0.9, 1.0)
  schedule = optimizer._learning_rate  # pylint: disable=protected-access
  assert float(schedule(199)) == pytest.approx(0.36)
  assert float(schedule(200)) == pytest.approx(0.36 * 0.94)  # x0.94 every 2 epochs
  assert float(schedule(400)) == pytest.approx(0.36 * 0.94 ** 2)


# ---- end to end ---------------------------------------------------------------------------------


def test_resnet_rmsprop_trains_checkpoints_and_resumes_exactly(imagenet_dir, tmp_path):
  train_dir = tmp_path / "resnet_rmsprop"
  # A 1-step epoch so the RMSProp decay (x0.94 every 2 epochs) shows within 4 steps.
  config = _config(train_dir, imagenet_dir, optimizer="rmsprop", train_steps=4,
                   checkpoint_every=2, examples_per_epoch=2)
  summary = imagenet_train.train(config)
  assert summary["step"] == 4 and np.isfinite(summary["loss"])
  first = run_files.read_losses(str(train_dir))
  assert first["step"].tolist() == [1, 2, 3, 4]
  lr0 = 0.045 * 2 / 32
  np.testing.assert_allclose(first["lr"], [lr0, lr0, lr0 * 0.94, lr0 * 0.94], rtol=1e-6)
  assert os.listdir(train_dir / "tensorboard")
  recorded = json.loads((train_dir / "run_config.json").read_text())
  assert recorded["identity"]["model"] == "resnet50_v2"
  assert recorded["derived"]["steps_per_epoch"] == 1

  # Interrupt: the run dies while writing checkpoint 4, after logging steps 3 and 4. What is
  # left: checkpoint 2 intact and named in the state file, half-written files of checkpoint 4.
  ckpt_dir = train_dir / "checkpoints"
  for name in os.listdir(ckpt_dir):
    if name.startswith("ckpt-4"):
      (ckpt_dir / name).write_bytes(b"\0partial")
  (ckpt_dir / "checkpoint").write_text(
      'model_checkpoint_path: "ckpt-2"\nall_model_checkpoint_paths: "ckpt-2"\n')

  resumed = imagenet_train.train(config)
  assert (resumed["start_step"], resumed["step"]) == (2, 4)
  second = run_files.read_losses(str(train_dir))
  assert second["step"].tolist() == [1, 2, 3, 4]  # steps 3-4 replaced, not duplicated
  # Same model, optimizer, step and data iterator state: the same losses as uninterrupted.
  np.testing.assert_allclose(second["loss"], first["loss"], rtol=1e-4)
  np.testing.assert_allclose(second["lr"], first["lr"], rtol=1e-7)
  assert tf.train.latest_checkpoint(str(ckpt_dir)).endswith("ckpt-4")

  # Already at train_steps: a rerun trains nothing and keeps the CSV as is.
  again = imagenet_train.train(config)
  assert (again["start_step"], again["step"]) == (4, 4)
  assert _csv_steps(train_dir) == [1, 2, 3, 4]


def test_inception_rmsprop_trains_through_the_command_line_main(imagenet_dir, tmp_path):
  train_dir = tmp_path / "inception_rmsprop"
  eval_imagenet.FLAGS.unparse_flags()
  eval_imagenet.FLAGS([
      "eval_imagenet.py", "--model=inception_v3", "--optimizer=rmsprop", "--image_size=75",
      f"--num_classes={NUM_CLASSES}", "--global_batch_size=2", "--train_steps=2",
      "--checkpoint_every=1", "--strategy=one_device", "--shuffle_buffer=8",
      f"--data_dir={imagenet_dir}", f"--train_dir={train_dir}"])
  try:
    eval_imagenet.main(["eval_imagenet.py"])
  finally:
    eval_imagenet.FLAGS.unparse_flags()
  losses = run_files.read_losses(str(train_dir))
  assert losses["step"].tolist() == [1, 2] and np.all(np.isfinite(losses["loss"]))
  recorded = json.loads((train_dir / "run_config.json").read_text())["identity"]
  assert (recorded["model"], recorded["image_size"], recorded["label_smoothing"],
          recorded["weight_decay"]) == ("inception_v3", 75, 0.1, 4e-5)
  assert tf.train.latest_checkpoint(str(train_dir / "checkpoints")).endswith("ckpt-2")

  out = tmp_path / "curves.png"
  summary = plot_curves.plot_runs([str(train_dir)], str(out), smooth=2)
  assert out.stat().st_size > 1000
  assert summary["inception_v3"][0][0] == "rmsprop"
  assert summary["inception_v3"][0][1] == pytest.approx(losses["loss"][-1])


@pytest.mark.slow  # 22 s; the default suite runs main() in-process (inception test above)
def test_command_line_synthetic_smoke_run(tmp_path):
  train_dir = tmp_path / "smoke"
  result = subprocess.run(
      [sys.executable, "eval_imagenet.py", "--synthetic", "--model=resnet50_v2",
       "--optimizer=adam", "--image_size=32", "--num_classes=5", "--global_batch_size=2",
       "--train_steps=2", "--strategy=one_device", f"--train_dir={train_dir}"],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert _csv_steps(train_dir) == [1, 2]
  plot = subprocess.run(
      [sys.executable, "-m", "experiments.plot_curves", f"--runs={train_dir}",
       f"--out={tmp_path / 'smoke.png'}"], cwd=REPO, capture_output=True, text=True,
      timeout=300, check=False)
  assert plot.returncode == 0, plot.stderr[-3000:]
  assert "resnet50_v2: adam: final loss" in plot.stdout
  assert (tmp_path / "smoke.png").exists()


# ---- bad input: a clear error before training starts -----------------------------------------


@pytest.fixture
def no_network_building(monkeypatch):
  """Fail the test if a network gets built: the error must come before that."""
  def refuse(*args, **kwargs):
    raise AssertionError("build_model reached: the bad input was not caught up front")
  monkeypatch.setattr(imagenet_models, "build_model", refuse)


def _copy_prepared(imagenet_dir, destination) -> str:
  """A copy of the prepared imagenet2012 directory tree, to damage."""
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.copytree(imagenet_dir, destination)
  version_dir = os.path.join(destination, "imagenet2012")
  return os.path.join(version_dir, os.listdir(version_dir)[0])


@pytest.mark.parametrize("damage,message", [
    ("missing", "does not exist"),
    ("empty", "holds no prepared imagenet2012"),
    ("corrupt_info", "cannot load the imagenet2012 metadata"),
    ("missing_shard", "train shard(s) listed in dataset_info.json are missing"),
    ("truncated_shard", "truncated or incomplete copy"),
    ("garbled_shard", "train TFRecords are unreadable"),
])
def test_bad_data_dir_is_reported_with_its_path(imagenet_dir, tmp_path, damage, message,
                                                no_network_building):
  data_dir = str(tmp_path / "data")
  if damage == "empty":
    os.makedirs(data_dir)
  elif damage != "missing":
    version_dir = _copy_prepared(imagenet_dir, data_dir)
    shard = next(os.path.join(version_dir, p) for p in os.listdir(version_dir)
                 if "train.tfrecord" in p)
    if damage == "corrupt_info":
      with open(os.path.join(version_dir, "dataset_info.json"), "w") as f:
        f.write("{ not json")
    elif damage == "missing_shard":
      os.remove(shard)
    elif damage == "truncated_shard":
      with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    else:  # same length, overwritten bytes: only reading finds it
      with open(shard, "r+b") as f:
        f.write(b"\xff" * 64)
  with pytest.raises(imagenet_train.SetupError, match="data_dir") as error:
    imagenet_train.train(_config(tmp_path / "run", data_dir))
  assert message in str(error.value)
  assert data_dir in str(error.value)
  assert not (tmp_path / "run" / "run_config.json").exists()


def test_manual_dir_without_the_tar_files_is_reported(tmp_path, no_network_building):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "ILSVRC2012_img_train.tar").write_bytes(b"")
  with pytest.raises(imagenet_train.SetupError, match="lacks ILSVRC2012_img_val.tar"):
    imagenet_train.train(_config(tmp_path / "run", str(tmp_path / "data"),
                                 manual_dir=str(manual)))


def test_missing_data_dir_exits_with_a_message_from_the_command_line(tmp_path):
  missing = tmp_path / "nowhere"
  result = subprocess.run(
      [sys.executable, "eval_imagenet.py", f"--data_dir={missing}", "--model=resnet50_v2",
       f"--train_dir={tmp_path / 'run'}", "--strategy=one_device"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 1
  assert f"eval_imagenet.py: error: --data_dir={missing} does not exist" in result.stderr
  assert "Traceback" not in result.stderr


def test_unknown_model_is_rejected_by_the_flag_and_the_config(tmp_path):
  eval_imagenet.FLAGS.unparse_flags()
  with pytest.raises(Exception, match="resnet50_v2"):  # absl lists the allowed values
    eval_imagenet.FLAGS(["eval_imagenet.py", "--model=vgg16", "--train_dir=x"])
  eval_imagenet.FLAGS.unparse_flags()
  with pytest.raises(imagenet_train.SetupError, match="unknown --model='vgg16'"):
    _config(tmp_path, None, model="vgg16", synthetic=True).resolved()
  with pytest.raises(imagenet_train.SetupError, match="too small for inception_v3"):
    _config(tmp_path, None, model="inception_v3", image_size=74, synthetic=True).resolved()


def test_train_dir_of_a_different_run_is_refused_naming_the_difference(tmp_path,
                                                                       no_network_building):
  train_dir = tmp_path / "run"
  train_dir.mkdir()
  ours = _config(train_dir, None, synthetic=True).resolved()
  identity = imagenet_train._identity(ours, True)  # pylint: disable=protected-access
  identity.update(model="inception_v3", image_size=75, optimizer="learned")
  (train_dir / "run_config.json").write_text(json.dumps({"identity": identity}))
  with pytest.raises(imagenet_train.SetupError) as error:
    imagenet_train.train(_config(train_dir, None, synthetic=True))
  text = str(error.value)
  for difference in ("model: train_dir has 'inception_v3', flags give 'resnet50_v2'",
                     "image_size: train_dir has 75, flags give 32",
                     "optimizer: train_dir has 'learned', flags give 'rmsprop'"):
    assert difference in text

  orphan = tmp_path / "orphan"
  (orphan / "checkpoints").mkdir(parents=True)
  tf.train.Checkpoint(v=tf.Variable(1.0)).save(str(orphan / "checkpoints" / "ckpt"))
  with pytest.raises(imagenet_train.SetupError, match="holds checkpoints but no run_config"):
    imagenet_train.train(_config(orphan, None, synthetic=True))


# ---- the learned optimizer --------------------------------------------------------------------


def _learned_opt():
  return pytest.importorskip("learned_opt", reason="the learned_opt package is not there yet")


def _weights_file(path, preset: str) -> str:
  learned_opt = _learned_opt()
  config = learned_opt.config.get(preset)
  meta = {k: np.asarray(v) for k, v in learned_opt.hrnn.init_meta_params(config, 0).items()}
  learned_opt.weights.save(path, meta, config, {"source": f"test file ({preset})"})
  return str(path)


def test_learned_weights_for_another_config_fail_before_the_network_is_built(
    tmp_path, no_network_building):
  stable_file = _weights_file(tmp_path / "stable.npz", "stable")
  with pytest.raises(imagenet_train.SetupError) as error:
    imagenet_train.train(_config(tmp_path / "run", None, synthetic=True, optimizer="learned",
                                 weights=stable_file, learned_config="paper"))
  assert "stable.npz" in str(error.value) and "--optimizer=learned" in str(error.value)
  assert "was made for another config" in str(error.value)
  assert not (tmp_path / "run" / "run_config.json").exists()


@pytest.mark.parametrize("weights,message", [
    ("corrupt.npz", "corrupt.npz"),
    ("no_such_shipped_name", "no_such_shipped_name"),
])
def test_bad_learned_weights_fail_before_the_network_is_built(tmp_path, no_network_building,
                                                              weights, message):
  _learned_opt()
  if weights.endswith(".npz"):
    weights = str(tmp_path / weights)
    with open(weights, "wb") as f:
      f.write(b"not a zip file")
  with pytest.raises(imagenet_train.SetupError, match=message):
    imagenet_train.train(_config(tmp_path / "run", None, synthetic=True, optimizer="learned",
                                 weights=weights))


@pytest.mark.parametrize("mixed_precision", [False, True])
def test_learned_optimizer_steps_a_slice_of_the_network(tmp_path, mixed_precision):
  """The learned branch of make_optimizer with a weights file (and under loss scaling for
  --mixed_precision) stepping real network variables inside a tf.function: the first layers
  of ResNet50V2, since all 23.5M parameters take about a minute per step on this CPU."""
  learned_opt = _learned_opt()
  weights = _weights_file(tmp_path / "paper.npz", "paper")
  config = _config(tmp_path, None, synthetic=True, optimizer="learned", weights=weights,
                   learning_rate=1e-2, mixed_precision=mixed_precision).resolved()
  optimizer = imagenet_train.make_optimizer(config, steps_per_epoch=10)
  inner = optimizer.inner_optimizer if mixed_precision else optimizer
  assert isinstance(inner, learned_opt.LearnedOptimizer)
  model = imagenet_models.build_model("resnet50_v2", 32, NUM_CLASSES)
  variables = model.trainable_variables[:2]
  before = [v.numpy().copy() for v in variables]

  @tf.function(autograph=False)
  def step():
    with tf.GradientTape() as tape:
      loss = tf.add_n([tf.reduce_sum(v) for v in variables])  # gradient +1 everywhere
      scaled = optimizer.scale_loss(loss)
    optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))

  step()
  for old, v in zip(before, variables):
    delta = v.numpy() - old
    assert np.all(np.isfinite(delta)) and np.mean(delta < 0) > 0.9  # against the gradient


_TRAIN_DRIVER = """
import json, sys
from experiments import imagenet_train
result = imagenet_train.train(imagenet_train.RunConfig(**json.loads(sys.argv[1])))
print("RESULT " + json.dumps(result, default=float))
"""


def _train_in_a_fresh_process(config: imagenet_train.RunConfig) -> dict:
  """imagenet_train.train(config) in a child process. The learned optimizer's step on a
  21-25M-parameter network holds ~13 GB while it trains, and one pytest process that trained
  both networks in turn kept both: the slow suite was OOM-killed at 23 GB of this machine's 24."""
  out = subprocess.run([sys.executable, "-c", _TRAIN_DRIVER,
                        json.dumps(dataclasses.asdict(config))], cwd=REPO, capture_output=True,
                       text=True, timeout=1800, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_learned_trains_resnet_and_resumes_exactly(imagenet_dir, tmp_path):
  weights = _weights_file(tmp_path / "paper.npz", "paper")
  train_dir = tmp_path / "resnet_learned"
  config = _config(train_dir, imagenet_dir, optimizer="learned", weights=weights,
                   train_steps=2, checkpoint_every=1)
  _train_in_a_fresh_process(config)
  first = run_files.read_losses(str(train_dir))
  ckpt_dir = train_dir / "checkpoints"
  (ckpt_dir / "checkpoint").write_text(
      'model_checkpoint_path: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-1"\n')
  resumed = _train_in_a_fresh_process(config)
  assert (resumed["start_step"], resumed["step"]) == (1, 2)
  second = run_files.read_losses(str(train_dir))
  assert second["step"].tolist() == [1, 2]
  # Restored RNN state, momenta and data iterator: step 2 is the uninterrupted step 2.
  np.testing.assert_allclose(second["loss"], first["loss"], rtol=1e-4)
  provenance = json.loads((train_dir / "run_config.json").read_text())["derived"]
  assert provenance["optimizer_class"] == "LearnedOptimizer"
  assert provenance["weights_provenance"]["source"] == "test file (paper)"


@pytest.mark.slow
def test_learned_and_rmsprop_train_inception_and_plot_like_fig_8b(imagenet_dir, tmp_path):
  weights = _weights_file(tmp_path / "paper.npz", "paper")
  runs = []
  for optimizer in ("learned", "rmsprop"):
    train_dir = tmp_path / f"inception_{optimizer}"
    _train_in_a_fresh_process(_config(train_dir, imagenet_dir, model="inception_v3",
                                      image_size=75, optimizer=optimizer, weights=weights,
                                      train_steps=2))
    assert _csv_steps(train_dir) == [1, 2]
    runs.append(str(train_dir))
  summary = plot_curves.plot_runs(runs, str(tmp_path / "fig8b.png"))
  labels = [label for label, _ in summary["inception_v3"]]
  assert labels == [f"learned ({weights})", "rmsprop"]
  assert (tmp_path / "fig8b.png").stat().st_size > 1000


_DRIVER = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from experiments import distribute, imagenet_train
if sys.argv[2] == "mirrored":  # MirroredStrategy() alone would take only the first CPU
  distribute.make_strategy = lambda name: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
config = imagenet_train.RunConfig(
    train_dir=sys.argv[1], strategy=sys.argv[2], train_steps=int(sys.argv[3]), synthetic=True,
    model="resnet50_v2", image_size=32, num_classes=4, global_batch_size=4, checkpoint_every=1)
print(imagenet_train.train(config))
"""


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["mirrored", "multi_worker"])
def test_data_parallel_strategies_train_and_resume(tmp_path, strategy):
  """Two CPU replicas (mirrored: batches split from one checkpointed iterator) and a
  one-worker MultiWorkerMirroredStrategy cluster (per-worker datasets, reseeded on resume)."""
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, TF_CONFIG=json.dumps(
      {"cluster": {"worker": [f"localhost:{port}"]}, "task": {"type": "worker", "index": 0}}))
  train_dir = tmp_path / strategy
  for steps in (2, 3):
    result = subprocess.run([sys.executable, "-c", _DRIVER, str(train_dir), strategy,
                             str(steps)], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
  assert _csv_steps(train_dir) == [1, 2, 3]
  derived = json.loads((train_dir / "run_config.json").read_text())["derived"]
  assert derived["replicas"] == (2 if strategy == "mirrored" else 1)
  identity = json.loads((train_dir / "run_config.json").read_text())["identity"]
  assert identity["data_iterator_in_checkpoint"] == (strategy == "mirrored")
