# syntax=docker/dockerfile:1
# The training image: the official Ray image of the pinned Ray version plus this package, built as a wheel and
# installed (not editable) with its dependencies pinned (tools/image/pins.py): the base image's own version of every
# package it already has, constraints.txt's for the rest.
#
#   GPU (default):  docker build -t mnist-train:0.1.0-gpu --build-arg GIT_SHA=$(git rev-parse HEAD) .
#   CPU:            docker build -t mnist-train:0.1.0-cpu --build-arg EXTRAS= --build-arg GIT_SHA=$(git rev-parse HEAD) .
#   arm64 hosts:    add --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-aarch64 (Ray tags its arm64 images -aarch64)
#   Without Docker: tools/image/build.sh (buildah; a stand-in base built from Debian and PyPI, docs/kubernetes.md)
#
# One CUDA stack: both images start from Ray's CPU image, and the GPU image adds the pip CUDA/cuDNN wheels of
# tensorflow[and-cuda], the ones TensorFlow is built and tested with. Ray's -gpu image would put a second CUDA (a
# system-wide devel toolkit) under them, a known cause of TensorFlow not finding the GPU, and weighs several GB more.
# The GPU nodes' NVIDIA container runtime supplies the driver.
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311

# The package as a wheel. Only this stage sees the sources; the image gets the wheel's contents.
FROM ${BASE_IMAGE} AS wheel
# The build machine's pip configuration where it is not the base image's (tools/image/build.sh mounts it read-only).
ARG PIP_CONFIG_FILE
USER 1000:100
WORKDIR /tmp/src
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 job job
RUN python -m pip wheel --quiet --no-cache-dir --no-deps --wheel-dir /tmp/dist .

FROM ${BASE_IMAGE}

# Set by BuildKit (amd64, arm64); empty with the legacy builder.
ARG TARGETARCH
# "gpu" adds tensorflow[and-cuda] (the CUDA/cuDNN wheels); empty for the CPU image.
ARG EXTRAS=gpu
ARG PIP_CONFIG_FILE

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
WORKDIR /home/ray

# The dependencies, in a layer of their own (a change to job/ does not reinstall them). Every package the base image
# already has stays at its version: pip never uninstalls one of Ray's (tools/image/pins.py says why). The build fails
# (not the job) if the CUDA wheels are missing or TensorFlow is not a CUDA build. The build machine has no GPU: this
# checks the libraries, not a device.
COPY --chown=1000:100 pyproject.toml constraints.txt tools/image/pins.py /tmp/plan/
RUN python /tmp/plan/pins.py requirements /tmp/plan/pyproject.toml "${EXTRAS}" > /tmp/plan/requirements.txt \
 && python -m pip list --format=freeze > /tmp/plan/base.txt \
 && python /tmp/plan/pins.py constraints /tmp/plan/base.txt /tmp/plan/constraints.txt > /tmp/plan/pins.txt \
 && python -m pip install --quiet --no-cache-dir -r /tmp/plan/requirements.txt -c /tmp/plan/pins.txt \
 && rm -rf /tmp/plan \
 && if [ "${EXTRAS}" = gpu ] && ! python -m pip list --format=freeze | grep -q '^nvidia-'; then \
      echo "EXTRAS=gpu installed no CUDA wheels: pyproject.toml needs gpu = [\"tensorflow[and-cuda]==...\"]" >&2; \
      exit 1; \
    fi \
 && if [ "${EXTRAS}" = gpu ]; then \
      python -c 'import sys, tensorflow as tf; sys.exit(None if tf.sysconfig.get_build_info().get("is_cuda_build") else "EXTRAS=gpu: this TensorFlow is not a CUDA build, so the GPU image would train on CPU")'; \
    fi

# The job itself. Importing matplotlib warms its font cache, so a run downloads nothing but its data set.
COPY --from=wheel --chown=1000:100 /tmp/dist /tmp/dist
RUN python -m pip install --quiet --no-cache-dir --no-deps /tmp/dist/*.whl \
 && rm -rf /tmp/dist \
 && python -m pip check \
 && python -c "import tensorflow as tf, tf_keras, ray, pyarrow.fs, matplotlib.pyplot, job.cli; print(tf.__version__, ray.__version__)"

# The commit the image is built from, for results.json's git_sha (the image has no .git). Last, so that a new commit
# rebuilds nothing above.
ARG GIT_SHA=""
ENV MNIST_TRAIN_GIT_SHA=${GIT_SHA}
LABEL org.opencontainers.image.revision=${GIT_SHA}

CMD ["python", "-m", "job", "--help"]
