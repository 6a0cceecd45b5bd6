# syntax=docker/dockerfile:1
# Airflow 3.3.2 with the workflow's pinned requirements and code. Two targets:
#   cpu  scheduler, api-server, dag-processor, triggerer, CPU worker   docker build --target cpu .
#   gpu  the same plus TensorFlow's CUDA libraries, for GPU workers    docker build --target gpu .
# docker-compose.yaml builds both. The code is copied in so that a worker on another machine needs
# only the image; compose also mounts the working tree over it for development.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11

FROM ${AIRFLOW_IMAGE} AS base
# As in Airflow's "extending the image" guide: install as the airflow user, pin Airflow itself so
# that pip never up- or downgrades it while resolving the requirements.
COPY --chown=airflow:root requirements.txt /opt/airflow/project/requirements.txt
RUN pip install --no-cache-dir "apache-airflow==3.3.2" -r /opt/airflow/project/requirements.txt
COPY --chown=airflow:root pyproject.toml requirements.in README.md /opt/airflow/project/
COPY --chown=airflow:root tl_tasks /opt/airflow/project/tl_tasks
COPY --chown=airflow:root reports /opt/airflow/project/reports
# The project as a package (pyproject.toml), editable so that compose's development mounts of tl_tasks/ and
# reports/ over these folders take effect; its dependencies came with requirements.txt above.
RUN pip install --no-cache-dir --no-deps -e /opt/airflow/project
COPY --chown=airflow:root dags /opt/airflow/dags
COPY --chown=airflow:root plugins /opt/airflow/plugins
# Mount points that must exist (owned by airflow) before named volumes are attached.
RUN mkdir -p /opt/airflow/tl_home /opt/airflow/secrets /home/airflow/.keras
ENV TL_HOME=/opt/airflow/tl_home \
    KERAS_BACKEND=tensorflow \
    TF_CPP_MIN_LOG_LEVEL=2

FROM base AS gpu
# TensorFlow's CUDA and cuDNN wheels (nvidia-*); the host needs only the NVIDIA driver and the
# NVIDIA Container Toolkit.
RUN pip install --no-cache-dir "apache-airflow==3.3.2" "tensorflow[and-cuda]==2.21.0"
ENV TF_FORCE_GPU_ALLOW_GROWTH=true

# Last stage = what a plain `docker build .` produces.
FROM base AS cpu
