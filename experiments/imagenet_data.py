"""ImageNet training input for eval_imagenet.py: tensorflow-datasets `imagenet2012` or synthetic.

Real data is the standard tfds `imagenet2012` as users hold it: TFRecord shards prepared under
`data_dir/imagenet2012/<version>/` (by `tfds build imagenet2012 --manual_dir=...` or by
`prepare_from_manual_dir` here, from ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar).

Training preprocessing is the Inception one (TF-slim `inception_preprocessing`, without its colour
distortion, which ResNet recipes do not use either): a random crop covering 5-100% of the image
with aspect ratio 3/4-4/3 (`sample_distorted_bounding_box`, decoding only the crop), a random left
-right flip, a bilinear resize to `image_size` and a scale to [-1, 1].

The pipeline is deterministic given its seed and checkpointable: every random choice is a
stateless op seeded by the element's index in the stream, so a restored tf.data iterator
continues with exactly the images and crops the interrupted run would have seen.

With `num_classes` < 1000 only examples whose tfds label (the synset's index in tfds' sorted
`labels.txt`) is below `num_classes` are kept: the first `num_classes` ImageNet classes.
"""

from __future__ import annotations

import os

import tensorflow as tf

IMAGENET_NAME = "imagenet2012"
IMAGENET_TRAIN_EXAMPLES = 1_281_167
IMAGENET_CLASSES = 1000
MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")

# Inception crop (TF-slim inception_preprocessing.distorted_bounding_box_crop).
_MIN_OBJECT_COVERED = 0.1
_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
_AREA_RANGE = (0.05, 1.0)
_MAX_ATTEMPTS = 100


class DataError(ValueError):
  """The data directory is missing, incomplete or unreadable."""


def _tfds():
  """tensorflow_datasets, imported on first use (slow to import; synthetic runs skip it)."""
  try:
    import importlib_resources  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    # tfds' builders import it lazily and fail deep inside with a bare ModuleNotFoundError.
    raise DataError("reading imagenet2012 needs the `importlib_resources` package that "
                    "tensorflow-datasets uses; pip install importlib_resources") from e
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds


def _expected_layout(data_dir: str) -> str:
  return (f"expected TFRecords prepared by tensorflow-datasets at "
          f"{os.path.join(data_dir, IMAGENET_NAME, '<version>')}/ (dataset_info.json, "
          f"features.json, {IMAGENET_NAME}-train.tfrecord-*), as written by "
          f"`tfds build {IMAGENET_NAME} --data_dir={data_dir} --manual_dir=DIR`; or pass "
          f"--manual_dir=DIR holding {' and '.join(MANUAL_FILES)} to prepare them here")


def prepare_from_manual_dir(data_dir: str, manual_dir: str) -> None:
  """Build the imagenet2012 TFRecords in data_dir from the ILSVRC2012 tar files in manual_dir.

  Does nothing when data_dir already holds a prepared copy. The validation tar is required too:
  tfds' builder reads its file names even when only the train split is wanted.
  """
  if not os.path.isdir(manual_dir):
    raise DataError(f"--manual_dir={manual_dir} is not a directory; it must hold "
                    f"{' and '.join(MANUAL_FILES)} from image-net.org")
  missing = [f for f in MANUAL_FILES if not os.path.isfile(os.path.join(manual_dir, f))]
  if missing:
    raise DataError(f"--manual_dir={manual_dir} lacks {', '.join(missing)}; it must hold "
                    f"{' and '.join(MANUAL_FILES)} from image-net.org")
  tfds = _tfds()
  builder = tfds.builder(IMAGENET_NAME, data_dir=data_dir)
  if builder.is_prepared():
    return
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except Exception as e:  # tfds raises assorted types for a bad archive.
    raise DataError(f"preparing {IMAGENET_NAME} from --manual_dir={manual_dir} into "
                    f"--data_dir={data_dir} failed: {type(e).__name__}: {e}") from e


def open_imagenet(data_dir: str | None, num_classes: int):
  """The tfds builder of the prepared imagenet2012 in data_dir, after checking it is readable.

  Reads the first records of the train split, so a missing, truncated or foreign directory
  fails here, before any model is built, with a DataError naming the path.
  """
  if not data_dir:
    raise DataError("--data_dir is required (or --synthetic for random images); "
                    + _expected_layout("DATA_DIR"))
  if not os.path.isdir(data_dir):
    raise DataError(f"--data_dir={data_dir} does not exist; " + _expected_layout(data_dir))
  if not 2 <= num_classes <= IMAGENET_CLASSES:
    raise DataError(f"--num_classes={num_classes}: ImageNet has {IMAGENET_CLASSES} classes; "
                    f"use 2..{IMAGENET_CLASSES} (the first N classes are kept)")
  tfds = _tfds()
  try:
    builder = tfds.builder(IMAGENET_NAME, data_dir=data_dir)
    prepared = builder.is_prepared()
  except Exception as e:  # a corrupt dataset_info.json / features.json surfaces here.
    raise DataError(f"--data_dir={data_dir}: cannot load the {IMAGENET_NAME} metadata "
                    f"({type(e).__name__}: {e}); " + _expected_layout(data_dir)) from e
  if not prepared:
    root = os.path.join(data_dir, IMAGENET_NAME)
    found = sorted(os.listdir(root)) if os.path.isdir(root) else sorted(os.listdir(data_dir))
    raise DataError(f"--data_dir={data_dir} holds no prepared {IMAGENET_NAME} version "
                    f"{builder.version} (found: {found or 'nothing'}); "
                    + _expected_layout(data_dir))
  splits = builder.info.splits
  if "train" not in splits or splits["train"].num_examples == 0:
    raise DataError(f"--data_dir={data_dir}: {builder.data_dir} has no train split "
                    f"(splits: {list(splits)}); " + _expected_layout(data_dir))
  missing = [str(p) for p in splits["train"].filepaths if not tf.io.gfile.exists(str(p))]
  if missing:
    raise DataError(f"--data_dir={data_dir}: {len(missing)} train shard(s) listed in "
                    f"dataset_info.json are missing, e.g. {missing[0]}")
  # The shards hold every serialized example plus per-record framing, so together they are at
  # least num_bytes long; shorter means a truncated copy (checked without reading them).
  recorded_bytes = splits["train"].num_bytes
  actual_bytes = sum(tf.io.gfile.stat(str(p)).length for p in splits["train"].filepaths)
  if recorded_bytes and actual_bytes < recorded_bytes:
    raise DataError(f"--data_dir={data_dir}: the train shards in {builder.data_dir} hold "
                    f"{actual_bytes} bytes but dataset_info.json records {recorded_bytes}: "
                    "truncated or incomplete copy")
  _check_readable(builder, num_classes)
  return builder


def _check_readable(builder, num_classes: int, max_records: int = 2000) -> None:
  """Decode the first image and find a label below num_classes among the first records."""
  tfds = _tfds()
  dataset = builder.as_dataset(
      split="train", decoders={"image": tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(try_autocache=False))
  found_label = False
  try:
    for i, example in enumerate(dataset.take(max_records)):
      if i == 0:
        tf.io.decode_jpeg(example["image"], channels=3)
      if int(example["label"]) < num_classes:
        found_label = True
        break
  except (tf.errors.OpError, ValueError) as e:
    raise DataError(f"--data_dir={builder.data_dir}: the train TFRecords are unreadable "
                    f"({type(e).__name__}: {e})") from e
  if not found_label:
    # Without this check the label filter below would spin forever on an empty stream.
    raise DataError(f"--data_dir={builder.data_dir}: none of the first {max_records} train "
                    f"examples has a label below --num_classes={num_classes}")


def examples_per_epoch(builder, num_classes: int) -> int:
  """Train examples per epoch after keeping the first num_classes classes (ImageNet is nearly
  balanced, so the class fraction of the split size; exact at 1000 classes)."""
  total = builder.info.splits["train"].num_examples
  return max(1, round(total * min(num_classes, IMAGENET_CLASSES) / IMAGENET_CLASSES))


def preprocess_for_train(image_bytes: tf.Tensor, image_size: int, seed: tf.Tensor) -> tf.Tensor:
  """Inception crop, flip, resize and scale of one encoded JPEG; float32 in [-1, 1]."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  shape = tf.image.extract_jpeg_shape(image_bytes)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
      seed=crop_seed, min_object_covered=_MIN_OBJECT_COVERED,
      aspect_ratio_range=_ASPECT_RATIO_RANGE, area_range=_AREA_RANGE,
      max_attempts=_MAX_ATTEMPTS, use_image_if_no_bounding_boxes=True)
  offset_y, offset_x, _ = tf.unstack(begin)
  height, width, _ = tf.unstack(size)
  image = tf.image.decode_and_crop_jpeg(image_bytes, tf.stack([offset_y, offset_x, height, width]),
                                        channels=3)
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  image = tf.image.resize(image, [image_size, image_size], method="bilinear")
  image = tf.clip_by_value(image, 0.0, 255.0)  # bilinear can overshoot slightly
  return image / 127.5 - 1.0


def _stream_seed(seed: int, pipeline_id: int) -> int:
  # Separate streams per input pipeline (worker); the large odd factor avoids overlaps.
  return seed * 1_000_003 + pipeline_id


def imagenet_train_dataset(builder, *, batch_size: int, image_size: int, num_classes: int,
                           seed: int, shuffle_buffer: int,
                           input_context: tf.distribute.InputContext | None = None
                           ) -> tf.data.Dataset:
  """Endless, shuffled, augmented (image, label) batches from the prepared train split.

  Args:
    builder: from open_imagenet.
    batch_size: examples per batch this pipeline yields (per worker or per replica).
    input_context: under multi-worker training, shards the files across input pipelines.
  """
  tfds = _tfds()
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  stream_seed = _stream_seed(seed, pipeline_id)
  read_config = tfds.ReadConfig(
      shuffle_seed=stream_seed, input_context=input_context, try_autocache=False,
      interleave_cycle_length=16)
  dataset = builder.as_dataset(split="train", shuffle_files=True, read_config=read_config,
                               decoders={"image": tfds.decode.SkipDecoding()})
  dataset = dataset.map(lambda ex: (ex["image"], ex["label"]))
  if num_classes < IMAGENET_CLASSES:
    dataset = dataset.filter(lambda image, label: label < num_classes)
  # Shuffle the still-encoded JPEGs: a buffer of encoded images costs ~10x less memory (and
  # checkpoint space) than decoded ones.
  dataset = dataset.shuffle(shuffle_buffer, seed=stream_seed, reshuffle_each_iteration=True)
  dataset = dataset.repeat()
  dataset = dataset.enumerate()

  def parse(index, example):
    image_bytes, label = example
    seed_pair = tf.stack([tf.constant(stream_seed, tf.int64), index])
    return preprocess_for_train(image_bytes, image_size, seed_pair), tf.cast(label, tf.int32)

  dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  return dataset.prefetch(tf.data.AUTOTUNE)


def synthetic_dataset(*, batch_size: int, image_size: int, num_classes: int, seed: int,
                      input_context: tf.distribute.InputContext | None = None
                      ) -> tf.data.Dataset:
  """Endless batches of random images generated in-graph, for smoke runs without ImageNet.

  Labels are uniform; each image is its class's fixed random low-frequency pattern plus noise,
  so the task is learnable and loss curves mean something. No file is read.
  """
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  stream_seed = _stream_seed(seed, pipeline_id)
  templates = tf.image.resize(
      tf.random.stateless_uniform([num_classes, 8, 8, 3], [seed, -1], -1.0, 1.0),
      [image_size, image_size])

  def generate(index):
    label_seed, noise_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.stack([tf.constant(stream_seed, tf.int64),
                                                         index]), 2))
    label = tf.random.stateless_uniform([], label_seed, 0, num_classes, dtype=tf.int32)
    noise = tf.random.stateless_uniform([image_size, image_size, 3], noise_seed, -1.0, 1.0)
    image = tf.clip_by_value(0.5 * tf.gather(templates, label) + 0.5 * noise, -1.0, 1.0)
    return image, label

  dataset = tf.data.Dataset.counter(dtype=tf.int64).map(generate,
                                                        num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  return dataset.prefetch(tf.data.AUTOTUNE)
