"""The tf.data input pipeline: examples -> batches of (float32 (B, H, W, 1), int32 (B,)).

One pipeline, one mode switch (``training``)::

    decode (parallel, models.preprocessing) -> cache -> shuffle (train) -> augment (train)
        -> batch -> prefetch

* File sources (folder, CSV): each file is decoded by ``DataSource.load_pixels`` -- i.e.
  ``models.preprocessing.preprocess(bytes, size=, window=).model_input()``, the service's
  own call -- inside ``tf.numpy_function`` with ``num_parallel_calls=AUTOTUNE``. Without
  ``cache`` the (cheap) list of paths is shuffled before decoding instead.
* npz sources: the arrays are preprocessed once, in memory, with ``preprocess_array``.
* Unreadable files: the source scan already drops files whose header is unusable
  (``open_source(validate=True)``). A file that still fails to decode (e.g. truncated pixel
  data) is **dropped from the stream, not fatal**: it is logged at WARNING with its path and
  the reason and appended to the ``skipped`` list when the caller passes one (once per
  file, however many epochs are read). Errors that are not expected preprocessing/IO
  failures still stop the pipeline.
* Determinism: with a ``seed`` and ``deterministic=True``, two datasets built from the same
  inputs yield identical batches, epoch by epoch (shuffle order and augmentation draws are
  both seeded; each epoch reshuffles and redraws).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from radlens.models.errors import ConfigurationError, RadlensError
from radlens.training.data.augment import AugmentConfig, augment_image
from radlens.training.data.sources import DataSource, Example, SkippedFile, as_size

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE


def make_dataset(
    source: DataSource,
    examples: Sequence[Example],
    *,
    size: int | tuple[int, int],
    window: str | None = None,
    version: str | None = None,
    batch_size: int = 32,
    training: bool = False,
    seed: int | None = None,
    augment: bool | AugmentConfig = False,
    cache: bool = True,
    deterministic: bool = True,
    skipped: list[SkippedFile] | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Build the input pipeline for ``examples`` of ``source``.

    Args:
        source: the opened data source (gives class names and decodes pixels).
        examples: the examples to serve, e.g. one split of ``split_source``.
        size: model input size, ``64`` or ``(height, width)``.
        window: CT window preset name for DICOM (None: the file's VOI, else min-max).
        version: preprocessing version to reproduce (a stored model's; None: the current).
        batch_size: images per batch.
        training: shuffle (seeded) and, with ``augment``, augment. Validation/test
            pipelines (False) keep the example order and never augment.
        seed: shuffle/augmentation seed; None draws from TensorFlow's global seed.
        augment: True for the default :class:`AugmentConfig`, or a config; ignored
            when ``training`` is False.
        cache: keep decoded images in memory after the first epoch.
        deterministic: keep element order fixed under parallel decoding.
        skipped: when given, files that fail to decode are appended to it.
        drop_remainder: drop a last, smaller batch.

    Returns:
        A dataset of ``(float32 (B, H, W, 1) in [0, 1], int32 (B,))``; for a multi-label
        source the targets are float32 multi-hot ``(B, findings)``.

    Raises:
        models.errors.ConfigurationError: no examples, or a bad size/batch size.
    """
    hw = as_size(size)
    if hw is None:
        raise ConfigurationError("make_dataset needs a size (the model input), got None")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"batch_size must be a positive integer; got {batch_size!r}")
    examples = list(examples)
    if not examples:
        raise ConfigurationError("no examples to build a dataset from (empty split?)")
    bad = [e.label for e in examples if not 0 <= e.label < source.num_classes]
    if bad:
        raise ConfigurationError(
            f"label {bad[0]} out of range for {source.num_classes} classes {source.class_names!r}"
        )
    aug_config: AugmentConfig | None = None
    if training and augment:
        aug_config = augment if isinstance(augment, AugmentConfig) else AugmentConfig()

    labels = source.targets(examples)  # int32 (N,); multi-label: float32 multi-hot (N, F)
    shuffle_before_decode = training and not cache and source.kind != "npz"
    if source.kind == "npz":
        pixels = np.stack([source.load_pixels(e, size=hw, window=None) for e in examples])
        ds = tf.data.Dataset.from_tensor_slices((pixels, labels))
    else:
        ds = tf.data.Dataset.from_tensor_slices(([e.key for e in examples], labels))
        if shuffle_before_decode:
            ds = _shuffle(ds, len(examples), seed)
        ds = _decode_files(ds, source, hw, window, version, deterministic, skipped)
        if cache:
            ds = ds.cache()
    if training and not shuffle_before_decode:
        ds = _shuffle(ds, len(examples), seed)
    if aug_config is not None:
        ds = _augment(ds, aug_config, seed, deterministic)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.prefetch(AUTOTUNE).with_options(options)


def _shuffle(ds: tf.data.Dataset, n: int, seed: int | None) -> tf.data.Dataset:
    return ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)


def _decode_files(
    ds: tf.data.Dataset,
    source: DataSource,
    hw: tuple[int, int],
    window: str | None,
    version: str | None,
    deterministic: bool,
    skipped: list[SkippedFile] | None,
) -> tf.data.Dataset:
    empty = np.zeros((*hw, 1), dtype=np.float32)
    reported: set[str] = set()  # report each bad file once, whatever the number of epochs
    lock = threading.Lock()

    def load(key: bytes) -> tuple[np.ndarray, np.bool_]:
        path = key.decode("utf-8")
        example = Example(key=path, label=0)
        try:
            pixels = source.load_pixels(example, size=hw, window=window, version=version)
        except (RadlensError, OSError) as exc:
            reason = str(exc) if isinstance(exc, RadlensError) else f"cannot be read ({exc})"
            with lock:
                first = path not in reported
                reported.add(path)
            if first:
                log.warning("skipping %s: %s", path, reason)
                if skipped is not None:
                    skipped.append(SkippedFile(path, reason))
            return empty, np.bool_(False)
        if pixels.shape != empty.shape:  # a preprocessing contract violation: a bug
            raise RuntimeError(f"{path}: preprocess gave shape {pixels.shape}, not {empty.shape}")
        return pixels, np.bool_(True)

    def decode(key: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        image, ok = tf.numpy_function(load, [key], [tf.float32, tf.bool], stateful=False)
        image.set_shape((*hw, 1))
        ok.set_shape(())
        return image, label, ok

    ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.filter(lambda image, label, ok: ok)
    return ds.map(lambda image, label, ok: (image, label))


def _augment(
    ds: tf.data.Dataset, config: AugmentConfig, seed: int | None, deterministic: bool
) -> tf.data.Dataset:
    # one (2,) stateless seed per image, redrawn each epoch, reproducible for a given seed
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    zipped = tf.data.Dataset.zip((ds, seeds))

    def apply(pair: tuple[tf.Tensor, tf.Tensor], s: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image, label = pair
        return augment_image(image, s, config), label

    return zipped.map(apply, num_parallel_calls=AUTOTUNE, deterministic=deterministic)


def dataset_size(examples: Sequence[Example], batch_size: int, drop_remainder: bool = False) -> int:
    """Number of batches ``make_dataset`` yields for ``examples`` (none skipped)."""
    n = len(examples)
    return n // batch_size if drop_remainder else -(-n // batch_size)


def load_examples(
    source: DataSource,
    examples: Sequence[Example],
    *,
    size: tuple[int, int],
    window: str | None,
    version: str | None = None,
    batch_size: int = 32,
    skipped: list[SkippedFile] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``examples`` with the training pipeline (no augmentation, order kept);
    ``version``: the preprocessing version of the model they are for (None: the current).

    Returns:
        (inputs float32 (N, H, W, 1), labels int (N,)) for the examples that decoded;
        unreadable files are appended to ``skipped``.

    Raises:
        models.errors.ConfigurationError: none of the images could be read.
    """
    ds = make_dataset(
        source,
        examples,
        size=size,
        window=window,
        version=version,
        batch_size=batch_size,
        training=False,
        cache=False,
        deterministic=True,
        skipped=skipped,
    )
    xs, ys = [], []
    for x, y in ds.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ConfigurationError(
            f"none of the {len(examples)} images could be read (see the skipped files)"
        )
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)
