"""OpenLineage for the retraining DAG, through the official Airflow provider's extension points.

`RetrainingExtractor` (the provider's `[openlineage] extractors`) gives each task's COMPLETE and FAIL events the
run's data source as an input dataset and, for the gate, every champion it published as an output dataset;
`retraining_run_facets` (`[openlineage] custom_run_facets`) adds the run's settings and code version to every
task event. Facts come from the metrics database (the run's row), so the DAG file stays as it is. The provider
sends the events (its transport); nothing here speaks HTTP. Switched on by the provider's own settings, e.g.
OPENLINEAGE_URL; `tl_tasks.integrations.OPENLINEAGE_AIRFLOW_ENV` registers these hooks.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import attr
from airflow.providers.openlineage.extractors.base import BaseExtractor, OperatorLineage
from openlineage.client.event_v2 import InputDataset, OutputDataset
from openlineage.client.facet_v2 import DatasetFacet, RunFacet, dataset_version_dataset

from tl_tasks.layout import RunLayout
from tl_tasks.store import connect
from tl_tasks.store.models import CODE_KEY, SKIP_KEY

log = logging.getLogger(__name__)

SCHEMA_BASE = "https://github.com/tl-tasks/schemas/openlineage"  # where the facets below are described
FILE_NAMESPACE = "file"             # OpenLineage's naming of local files: namespace `file`, name = absolute path
SOURCE_NAMESPACE = "tl-tasks"       # built-in data sources (`synthetic`, Keras's `cifar10` download)
FILE_KINDS = ("folder", "cifar10")  # data sources read from a path: `<kind>:<absolute path>`
DECORATED_OPERATOR = "_PythonDecoratedOperator"  # what `@task` builds: every task of the retraining DAG


def _schema(name: str) -> str:
    return f"{SCHEMA_BASE}/{name}.json#/$defs/{name}"


# ------------------------------------------------------------------------------------------- facets

@attr.define
class LineageDatasetFacet(DatasetFacet):
    """The test set's fingerprint: runs with the same one are compared image by image (the gate's lineage)."""

    testSetFingerprint: str  # OpenLineage facets use camelCase

    @staticmethod
    def _get_schema() -> str:
        return _schema("LineageDatasetFacet")


@attr.define
class DataFingerprintDatasetFacet(DatasetFacet):
    """The prepared data's fingerprint (every split) and its image counts."""

    fingerprint: str
    counts: dict = attr.field(factory=dict)

    @staticmethod
    def _get_schema() -> str:
        return _schema("DataFingerprintDatasetFacet")


@attr.define
class ModelDatasetFacet(DatasetFacet):
    """A published champion's model file and where it came from."""

    variant: str
    sha256: str
    runId: str
    modelFile: str

    @staticmethod
    def _get_schema() -> str:
        return _schema("ModelDatasetFacet")


@attr.define
class EvaluationDatasetFacet(DatasetFacet):
    """Test accuracy with its interval (Wilson, 1 - alpha) on the lineage's test images."""

    testAccuracy: float | None
    accuracyInterval: list | None
    testImages: int | None
    top3Accuracy: float | None = None
    macroF1: float | None = None

    @staticmethod
    def _get_schema() -> str:
        return _schema("EvaluationDatasetFacet")


@attr.define
class GateDatasetFacet(DatasetFacet):
    """The gate's decision on this model against the champion before it."""

    decision: str
    reason: str
    forced: bool
    championRunId: str | None = None
    delta: float | None = None
    pValue: float | None = None
    alpha: float | None = None

    @staticmethod
    def _get_schema() -> str:
        return _schema("GateDatasetFacet")


@attr.define
class SettingsRunFacet(RunFacet):
    """The run's settings (the recipe: profile defaults and trigger overrides) and its gate options."""

    profile: str | None
    settings: dict
    gate: dict = attr.field(factory=dict)

    @staticmethod
    def _get_schema() -> str:
        return _schema("SettingsRunFacet")


@attr.define
class CodeVersionRunFacet(RunFacet):
    """The code version (package + git commit) and the library versions the run's numbers depend on."""

    codeVersion: str | None
    versions: dict = attr.field(factory=dict)

    @staticmethod
    def _get_schema() -> str:
        return _schema("CodeVersionRunFacet")


# ------------------------------------------------------------------------------------ what to emit

def data_source_dataset(run: dict) -> InputDataset:
    """The run's data source as an input dataset, with its lineage and data fingerprint facets."""
    source = str(run.get("data_source") or "unknown")
    kind, sep, rest = source.partition(":")  # stored as `folder:/abs/path` or `cifar10:/abs/path`
    path = rest if sep and kind in FILE_KINDS else source
    namespace, name = (FILE_NAMESPACE, path) if Path(path).is_absolute() else (SOURCE_NAMESPACE, source)
    facets: dict = {}
    if run.get("lineage"):
        facets["tl_lineage"] = LineageDatasetFacet(testSetFingerprint=run["lineage"])
    if run.get("data_fingerprint"):
        counts = (run.get("data_summary") or {}).get("counts") or {}
        facets["tl_dataFingerprint"] = DataFingerprintDatasetFacet(fingerprint=run["data_fingerprint"],
                                                                   counts=dict(counts))
    return InputDataset(namespace=namespace, name=name, facets=facets)


def champion_datasets(run: dict) -> list[OutputDataset]:
    """Each champion the run's gate published (its version folder), with model, evaluation and gate facets."""
    out = []
    for variant, result in sorted((run.get("results") or {}).items()):
        gate = result.get("gate") or {}
        folder = gate.get("published")
        if not folder:
            continue
        sha = result.get("model_sha256") or ""
        facets = {
            "version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=sha),
            "tl_model": ModelDatasetFacet(variant=variant, sha256=sha, runId=run["run_id"],
                                          modelFile=str(Path(folder) / "model.keras")),
            "tl_evaluation": EvaluationDatasetFacet(
                testAccuracy=result.get("accuracy"), accuracyInterval=gate.get("accuracy_ci"),
                testImages=gate.get("test_images") or (result.get("eval_info") or {}).get("test_images"),
                top3Accuracy=result.get("top3_accuracy"), macroF1=result.get("macro_f1")),
            "tl_gate": GateDatasetFacet(decision=str(gate.get("decision")), reason=str(gate.get("reason") or ""),
                                        forced=bool(gate.get("forced")), championRunId=gate.get("champion_run_id"),
                                        delta=gate.get("delta"), pValue=gate.get("p_value"), alpha=gate.get("alpha")),
        }
        out.append(OutputDataset(namespace=FILE_NAMESPACE, name=str(folder), facets=facets))
    return out


def task_lineage(run: dict, task_id: str) -> OperatorLineage:
    """A task's datasets: every task reads the data source (once prepared); the gate writes the champions."""
    inputs = [data_source_dataset(run)] if run.get("data_source") else []
    outputs = champion_datasets(run) if task_id == "gate" else []
    return OperatorLineage(inputs=inputs, outputs=outputs)


def run_facets(run: dict, settings: dict | None) -> dict:
    """The run facets of a task event: the settings (once prepared) and the code version."""
    params = run.get("params") or {}
    facets = {}
    if settings or params:
        facets["tl_settings"] = SettingsRunFacet(
            profile=(settings or params).get("profile"),
            settings={k: v for k, v in (settings or params).items() if k not in ("gate", SKIP_KEY)},
            gate=dict(params.get("gate") or {}))
    versions = dict(run.get("versions") or {})
    if versions:
        facets["tl_codeVersion"] = CodeVersionRunFacet(codeVersion=versions.get(CODE_KEY), versions=versions)
    return facets


# ------------------------------------------------------------------------------ provider entry points

class RetrainingExtractor(BaseExtractor):
    """The provider's extractor for `@task` tasks: lineage for runs recorded in the metrics database by the
    same DAG; for any other task it finds nothing, and the provider falls back to the task's inlets/outlets."""

    @classmethod
    def get_operator_classnames(cls) -> list[str]:
        return [DECORATED_OPERATOR]

    def _execute_extraction(self) -> OperatorLineage:
        return OperatorLineage()  # START: the task has read and written nothing yet (COMPLETE/FAIL say what)

    def extract_on_complete(self, task_instance) -> OperatorLineage:
        # Empty (not None, which the provider logs as invalid) for other DAGs: it then uses inlets/outlets.
        run = _recorded_run(task_instance)
        return task_lineage(run, task_instance.task_id) if run else OperatorLineage()

    def extract_on_failure(self, task_instance) -> OperatorLineage:
        return self.extract_on_complete(task_instance)


def retraining_run_facets(task_instance, ti_state) -> dict:
    """`[openlineage] custom_run_facets`: settings and code version of a retraining run's task event."""
    run = _recorded_run(task_instance)
    if run is None:
        return {}
    return run_facets(run, _saved_settings(task_instance.run_id))


def _recorded_run(task_instance) -> dict | None:
    """The metrics database's run of this task instance, when the same DAG recorded it; None otherwise."""
    try:
        with connect() as store:
            run = store.get_run(task_instance.run_id)
    except Exception as exc:  # lineage must never fail a task: the provider logs and sends a bare event
        log.warning("OpenLineage: could not read run %s from the metrics database: %s", task_instance.run_id, exc)
        return None
    return run if run and run.get("dag_id") == task_instance.dag_id else None


def _saved_settings(run_id: str) -> dict | None:
    path = RunLayout(run_id).settings_file
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
