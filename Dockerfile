# hpcml in a container: a slim Python, the MPICH wheel (no system MPI, no compiler), a
# non-root user, the package and its tests. The same image serves Kubernetes (k8s/: the
# MPI Operator's workers run its sshd, the launcher its mpiexec) and, converted by
# Apptainer (containers/hpcml.def), Slurm sites.
#
#   docker build -t hpcml:0.1.0 .
#   docker run --rm hpcml:0.1.0 mpiexec -n 2 python -m hpcml.train --epochs 1
#   docker run --rm hpcml:0.1.0 python tests/run_all.py --serial
FROM python:3.11-slim-bookworm

# ssh: the MPI Operator (kubeflow.org/v2beta1) starts the workers' ranks over ssh;
# procps: pgrep/ps for the tests; iproute2: the multi-host tests' namespaces
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       openssh-client openssh-server procps iproute2 \
    && rm -rf /var/lib/apt/lists/*

# one unprivileged user owns the code, the runs and its sshd (port 2222, no root)
RUN useradd --create-home --uid 1000 --shell /bin/bash mpiuser \
    && mkdir -p /opt/hpcml /home/mpiuser/.ssh /data /runs \
    && chown -R mpiuser:mpiuser /opt/hpcml /home/mpiuser /data /runs
COPY --chown=mpiuser:mpiuser containers/sshd_config /home/mpiuser/.sshd_config

WORKDIR /opt/hpcml
COPY --chown=mpiuser:mpiuser setup.py pyproject.toml README.md ./
COPY --chown=mpiuser:mpiuser hpcml ./hpcml
COPY --chown=mpiuser:mpiuser kernels ./kernels
COPY --chown=mpiuser:mpiuser slurm ./slurm
COPY --chown=mpiuser:mpiuser tests ./tests
RUN pip install --no-cache-dir "/opt/hpcml[mpich,test]"

USER 1000:1000
# one thread per rank unless told otherwise (a rank per core); Numba's cache in $HOME
ENV HPCML_NUM_THREADS=1 \
    NUMBA_CACHE_DIR=/home/mpiuser/.cache/numba \
    PYTHONUNBUFFERED=1
VOLUME ["/data", "/runs"]
CMD ["python", "-m", "hpcml", "--help"]
