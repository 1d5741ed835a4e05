# One image that runs the whole workflow (replaces the old three-script Docker build).
#   docker build -t lmship:latest .
#   docker run --rm -v "$PWD/results:/work/results" lmship:latest            # everything
#   docker run --rm -v "$PWD/results:/work/results" lmship:latest results/plot.png
# Or let Snakemake run every rule in it (Apptainer reads the local Docker daemon):
#   snakemake --cores 4 --sdm apptainer
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    TQDM_DISABLE=1

WORKDIR /work
COPY envs/requirements.lock envs/requirements.lock
# CPU build of torch (the default PyPI wheel for Linux bundles CUDA: several GB).
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r envs/requirements.lock

COPY Snakefile config.yaml ./
COPY workflow workflow
COPY envs envs
COPY profiles profiles

ENTRYPOINT ["snakemake", "--cores", "all"]
