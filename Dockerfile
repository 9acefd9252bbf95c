# syntax=docker/dockerfile:1
# The training image: the official Ray image of the pinned Ray version plus this package, installed by the same
# tools/install.sh that CI (the Makefile) runs, against the same constraints.txt.
#
#   GPU (default):  docker build -t mnist-train:0.1.0-gpu .
#   CPU:            docker build -t mnist-train:0.1.0-cpu --build-arg EXTRAS= .
#   arm64 hosts:    add --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-aarch64 (Ray tags its arm64 images -aarch64)
#
# One CUDA stack: both images start from Ray's CPU image, and the GPU image adds the pip CUDA/cuDNN wheels of
# tensorflow[and-cuda], the ones TensorFlow is built and tested with. Ray's -gpu image would put a second CUDA (a
# system-wide devel toolkit) under them, a known cause of TensorFlow not finding the GPU, and weighs several GB more.
# The GPU nodes' NVIDIA container runtime supplies the driver.
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311
FROM ${BASE_IMAGE}

# Set by BuildKit (amd64, arm64); empty with the legacy builder.
ARG TARGETARCH
# "gpu" adds tensorflow[and-cuda] (the CUDA/cuDNN wheels); empty for the CPU image.
ARG EXTRAS=gpu

# tf-keras instead of Keras 3 (Keras 3 cannot run MultiWorkerMirroredStrategy): set for every process in the image,
# before anything imports TensorFlow.
ENV TF_USE_LEGACY_KERAS=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/home/ray/.cache/matplotlib

# A base image of the other architecture would only run under emulation (slowly, if TensorFlow runs at all): stop.
RUN case "${TARGETARCH:-}:$(uname -m)" in \
      :*|amd64:x86_64|arm64:aarch64) ;; \
      *) echo "BASE_IMAGE is $(uname -m) but the target is ${TARGETARCH}; on arm64 build with" \
              "--build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-aarch64" >&2; \
         exit 1 ;; \
    esac

# The base image's non-root user: ray, uid 1000, group users (100). It owns the image's Python.
USER 1000:100
RUN mkdir -p /home/ray/app
WORKDIR /home/ray/app
COPY --chown=1000:100 . .

# The build fails (not the job) if the CUDA wheels are missing, TensorFlow is not a CUDA build or an import is
# broken. The build machine has no GPU: this checks the libraries, not a device. Importing matplotlib warms its
# font cache, so a run downloads nothing but its data set.
RUN tools/install.sh "${EXTRAS}" \
 && if [ "${EXTRAS}" = gpu ] && ! python -m pip list --format=freeze | grep -q '^nvidia-'; then \
      echo "EXTRAS=gpu installed no CUDA wheels: pyproject.toml needs gpu = [\"tensorflow[and-cuda]==...\"]" >&2; \
      exit 1; \
    fi \
 && if [ "${EXTRAS}" = gpu ]; then \
      python -c 'import sys, tensorflow as tf; sys.exit(None if tf.sysconfig.get_build_info().get("is_cuda_build") else "EXTRAS=gpu: this TensorFlow is not a CUDA build, so the GPU image would train on CPU")'; \
    fi \
 && python -c "import tensorflow as tf, tf_keras, ray, pyarrow.fs, matplotlib.pyplot, job.cli; print(tf.__version__, ray.__version__)"

CMD ["python", "-m", "job", "--help"]
