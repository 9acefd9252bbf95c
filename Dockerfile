# syntax=docker/dockerfile:1
# The training image: the official Ray image of the pinned Ray version plus this package, installed by the same
# tools/install.sh that CI (the Makefile) runs, against the same constraints.txt.
#
#   GPU (default):  docker build -t mnist-train:0.1.0-gpu .
#   CPU:            docker build -t mnist-train:0.1.0-cpu \
#                     --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311 --build-arg EXTRAS= .
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${BASE_IMAGE}

# "gpu" adds tensorflow[and-cuda] (the CUDA/cuDNN wheels); empty for the CPU image.
ARG EXTRAS=gpu

# tf-keras instead of Keras 3 (Keras 3 cannot run MultiWorkerMirroredStrategy): set for every process in the image,
# before anything imports TensorFlow.
ENV TF_USE_LEGACY_KERAS=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/home/ray/.cache/matplotlib

# The base image's non-root user: ray, uid 1000, group users (100). It owns the image's Python.
USER 1000:100
RUN mkdir -p /home/ray/app
WORKDIR /home/ray/app
COPY --chown=1000:100 . .

# The build fails (not the job) if the CUDA wheels are missing or an import is broken; importing matplotlib warms
# its font cache, so a run downloads nothing but its data set.
RUN tools/install.sh "${EXTRAS}" \
 && if [ "${EXTRAS}" = gpu ] && ! python -m pip list --format=freeze | grep -q '^nvidia-'; then \
      echo "EXTRAS=gpu installed no CUDA wheels: pyproject.toml needs gpu = [\"tensorflow[and-cuda]==...\"]" >&2; \
      exit 1; \
    fi \
 && python -c "import tensorflow as tf, tf_keras, ray, pyarrow.fs, matplotlib.pyplot, job.cli; print(tf.__version__, ray.__version__)"

CMD ["python", "-m", "job", "--help"]
