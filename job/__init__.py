"""Classic Keras MNIST training as a distributed Ray Train job."""

import os

# Keras 3 cannot run MultiWorkerMirroredStrategy across workers; tf-keras can, but only if this is set before
# TensorFlow is first imported in the process (see README, "Why tf-keras").
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
