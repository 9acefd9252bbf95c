"""Classic Keras MNIST training as a distributed Ray Train job."""

import os

# Keras 3 cannot run MultiWorkerMirroredStrategy across workers; tf-keras can, but only if this is set before
# TensorFlow is first imported in the process (docs/design.md, "tf-keras, not Keras 3").
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow turns its oneDNN kernels on by itself only on x86 CPUs with AVX-512 VNNI/BF16 or AMX; on the others
# (AVX2 only) they trained the tutorial's CNN 2.0x faster. Every process of the job (driver, Ray workers, serve
# replicas, the image's) imports this package before TensorFlow; a user's setting wins (docs/design.md, "oneDNN").
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"


def versions() -> dict[str, str]:
    """The versions a result was made with, read from package metadata (no TensorFlow import)."""
    import platform
    from importlib.metadata import version

    return {
        "mnist_train": __version__,
        "tensorflow": version("tensorflow"),
        "tf_keras": version("tf-keras"),
        "ray": version("ray"),
        "python": platform.python_version(),
    }
