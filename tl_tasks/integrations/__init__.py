"""Optional links to a team's ML platform: OpenLineage events (`openlineage`) and an MLflow tracking server with
its model registry (`mlflow`). Both are off unless the environment switches them on.

This module stays light (no Airflow, OpenLineage or MLflow import): `tl_tasks.airflow_local.env` reads it before
Airflow is configured.
"""
from __future__ import annotations

# The OpenLineage provider's hooks into this project, as Airflow settings. They do nothing by themselves: the
# provider stays disabled until a transport is configured (OPENLINEAGE_URL, AIRFLOW__OPENLINEAGE__TRANSPORT,
# OPENLINEAGE_CONFIG or an [openlineage] section). Thread, not fork: a task process that ran TensorFlow must
# never fork.
OPENLINEAGE_AIRFLOW_ENV = {
    "AIRFLOW__OPENLINEAGE__EXTRACTORS": "tl_tasks.integrations.openlineage.RetrainingExtractor",
    "AIRFLOW__OPENLINEAGE__CUSTOM_RUN_FACETS": "tl_tasks.integrations.openlineage.retraining_run_facets",
    "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "True",
}
