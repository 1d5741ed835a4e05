# One image that runs the whole workflow (see README.md, "Container").
#   docker build -t lmship:latest .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/results:/work/results" lmship:latest
#   docker run ... lmship:latest results/plot.png     (arguments go to snakemake)
# Or let Snakemake run every rule in it (Apptainer reads the local Docker daemon):
#   snakemake --cores 4 --sdm apptainer
#
# Build arguments:
#   BASE      the base image: any Debian-like image with Python 3.11 and its venv
#             module (default: the official python:3.11-slim-bookworm; CI uses a
#             Debian 12 root file system made with debootstrap and `docker import`).
#   PIP_ARGS  extra pip options for installing the lock file. The default adds
#             PyTorch's CPU index, where `torch==2.13.0+cpu` lives (PyPI's Linux
#             torch bundles CUDA: several GB). Replace it where that index is not
#             reachable, e.g. "--find-links http://127.0.0.1:8000/wheels/".
#   LMSHIP_IMAGE  a name recorded in the image's environment; every rule log
#             starts with it, which shows that the rule ran inside this image.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
ARG LMSHIP_IMAGE=lmship:latest

ENV LMSHIP_IMAGE=${LMSHIP_IMAGE} \
    PATH=/opt/lmship/venv/bin:${PATH} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TQDM_DISABLE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache

# Exactly the lock file (every package pinned with its sha256), in its own venv.
COPY envs/requirements.lock /opt/lmship/requirements.lock
RUN python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), "the lock file is for Python 3.11, this base has " + sys.version' \
    && python3 -m venv /opt/lmship/venv \
    && /opt/lmship/venv/bin/pip install -q ${PIP_ARGS} -r /opt/lmship/requirements.lock \
    && /opt/lmship/venv/bin/python -c 'import torch, tensorflow, onnxruntime, snakemake'

WORKDIR /work
COPY Snakefile config.yaml ./
COPY workflow workflow
COPY envs envs
COPY profiles profiles
# Writable for any user id (docker run --user), so results keep the caller's ownership.
RUN chmod -R a+rwX /work

ENTRYPOINT ["snakemake", "--cores", "all"]
