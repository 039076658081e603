"""Training data: sources and splits, the tf.data pipeline, augmentation, demo data.

``training.data.sources`` (no TensorFlow) opens a folder, CSV manifest or .npz into a
``DataSource`` and splits it by patient; ``training.data.pipeline`` turns examples into a
``tf.data.Dataset``; ``training.data.augment`` holds the training-only augmentation;
``training.data.demo`` writes a synthetic DICOM data set. Import the submodules directly.
"""
