"""Every path the workflow writes under `$TL_HOME`, in one place (light: no NumPy, Keras or SQLAlchemy).

    $TL_HOME/
        runs/<run_key>/                      RunLayout(run_id)
            settings.json                    .settings_file
            data/                            .data_dir  (DataFiles: meta.json, x_train.npy, ..., y_test.npy)
            models/<variant>/                .model_dir(variant)  (ModelFiles: model.keras, train_summary.json,
                                             finished.json, evaluation.json, predictions.npy, checkpoints/)
            report/index.html                .report_dir, .report_index
        reports/index.html, page-<n>.html    reports_root()  (the paginated index of all runs)
        cache/<kind>-<key>/                  cache_root()    (decoded sources; DataFiles: meta.json + *.npy)
        compiled/jax/                        compiled_root() (Keras on JAX: XLA's compiled programs, reused)
        champions/<variant>/<lineage>/       champions_root()
        deployed/<variant>                   deployed_root()
        watch/                               watch_root()

`config.run_key` turns a run id into its folder name; `config.tl_home` resolves `$TL_HOME`.
"""
from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from tl_tasks import config
from tl_tasks.variants import get_variant

RUNS_DIR = "runs"
REPORTS_DIR = "reports"
CACHE_DIR = "cache"
COMPILED_DIR = "compiled"
CHAMPIONS_DIR = "champions"
DEPLOYED_DIR = "deployed"
WATCH_DIR = "watch"
METRICS_DB_FILE = "metrics.db"

SETTINGS_FILE = "settings.json"
DATA_DIR = "data"
MODELS_DIR = "models"
REPORT_DIR = "report"
REPORT_INDEX = "index.html"

META_FILE = "meta.json"
ARRAY_SUFFIX = ".npy"

MODEL_FILE = "model.keras"
TRAIN_SUMMARY_FILE = "train_summary.json"
FINISHED_FILE = "finished.json"     # signature, epochs and model sha256 of a finished training (reuse on retry)
EVALUATION_FILE = "evaluation.json"
PREDICTIONS_FILE = "predictions.npy"
CONFIDENCE_FILE = "confidence.npy"  # the top-1 probability of each test image (ranks the changed images)
CHECKPOINTS_DIR = "checkpoints"
# inside checkpoints/: the model after each completed epoch and the state file naming it
CHECKPOINT_STATE_FILE = "state.json"
CHECKPOINT_PREVIOUS_STATE_FILE = "state.previous.json"
CHECKPOINT_INITIAL_MODEL = "initial.keras"
CHECKPOINT_BEST_WEIGHTS = "best_weights.npz"
CHECKPOINT_EPOCH_GLOB = "epoch_*.keras"


def checkpoint_epoch_file(completed_epochs: int) -> str:
    """The checkpoint model's file name after `completed_epochs` epochs: `epoch_003.keras`."""
    return f"epoch_{completed_epochs:03d}.keras"


# --- TL_HOME-level folders -------------------------------------------------------------------------

def runs_root() -> Path:
    return config.tl_home() / RUNS_DIR


def reports_root() -> Path:
    """The paginated index of all runs' reports."""
    return config.tl_home() / REPORTS_DIR


def cache_root() -> Path:
    """Decoded data sources, keyed by path and the sha256 of their content, shared between runs."""
    return config.tl_home() / CACHE_DIR


def compiled_root() -> Path:
    """Compiled programs that a backend keeps between processes (`tl_tasks.training.runtime`); not run data."""
    return config.tl_home() / COMPILED_DIR


JAX_COMPILATION_CACHE_ENV = "TL_JAX_COMPILATION_CACHE"
JAX_COMPILED_NAME = re.compile(r".+-[0-9a-f]{64}-cache")  # <name>-<sha256 key>-cache, beside an optional -atime


def jax_compiled_dir() -> Path | None:
    """Where Keras on JAX keeps compiled programs: `$TL_JAX_COMPILATION_CACHE`, `off` for nowhere, default
    `compiled_root() / "jax"`."""
    value = os.environ.get(JAX_COMPILATION_CACHE_ENV, "").strip()
    if value.lower() == "off":
        return None
    return Path(value).expanduser() if value else compiled_root() / "jax"


def jax_compiled_programs(folder: Path) -> list[Path]:
    """The compiled programs in a JAX cache folder: the files named as JAX names them, sorted."""
    return sorted(p for p in folder.glob("*-cache") if JAX_COMPILED_NAME.fullmatch(p.name))


def champions_root() -> Path:
    return config.tl_home() / CHAMPIONS_DIR


def deployed_root() -> Path:
    return config.tl_home() / DEPLOYED_DIR


def watch_root() -> Path:
    return config.tl_home() / WATCH_DIR


def metrics_db_file() -> Path:
    """The default (SQLite) metrics database, used when TL_METRICS_DB_URL is unset."""
    return config.tl_home() / METRICS_DB_FILE


def metrics_db_url() -> str:
    """SQLAlchemy URL of the metrics database: `$TL_METRICS_DB_URL`, default the SQLite file `metrics_db_file()`."""
    return os.environ.get("TL_METRICS_DB_URL") or f"sqlite:///{metrics_db_file()}"


# inside reports/: the front page (REPORT_INDEX), archive pages and the state of the last index build
REPORTS_INDEX_STATE_FILE = "index-state.json"


def reports_page_file(page: int) -> str:
    """An archive page's file name in reports/: `page-3.html` (page 1 holds the oldest runs)."""
    return f"page-{page}.html"


REPORTS_PAGE_GLOB = "page-*.html"

# URL-style paths relative to $TL_HOME (what the reports plugin serves), and links between pages
REPORTS_INDEX_URL_PATH = f"{REPORTS_DIR}/{REPORT_INDEX}"
REPORTS_URL_PREFIX = "/retraining-reports"  # where the Airflow plugin serves $TL_HOME's reports


def href(from_page: str, to_page: str) -> str:
    """A relative link from one served page to another, both given relative to `$TL_HOME` (URL style):
    `href("runs/a/report/index.html", "reports/index.html")` -> `"../../../reports/index.html"`."""
    return posixpath.relpath(to_page, posixpath.dirname(from_page) or ".")


# --- the files of one folder -----------------------------------------------------------------------

class DataFiles:
    """A folder of named arrays plus `meta.json`: a run's prepared data, or a decode-cache entry."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @property
    def meta(self) -> Path:
        return self.folder / META_FILE

    def array(self, name: str) -> Path:
        """`x_train` -> `<folder>/x_train.npy`."""
        return self.folder / f"{name}{ARRAY_SUFFIX}"

    def arrays(self) -> list[Path]:
        """The array files present in the folder, sorted."""
        return sorted(self.folder.glob(f"*{ARRAY_SUFFIX}"))

    def __repr__(self) -> str:
        return f"DataFiles({str(self.folder)!r})"


class ModelFiles:
    """What train and evaluate write for one variant of one run."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @property
    def model(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def train_summary(self) -> Path:
        return self.folder / TRAIN_SUMMARY_FILE

    @property
    def finished(self) -> Path:
        return self.folder / FINISHED_FILE

    @property
    def evaluation(self) -> Path:
        return self.folder / EVALUATION_FILE

    @property
    def predictions(self) -> Path:
        return self.folder / PREDICTIONS_FILE

    @property
    def confidence(self) -> Path:
        return self.folder / CONFIDENCE_FILE

    @property
    def checkpoints(self) -> Path:
        """Per-epoch checkpoints (`CHECKPOINT_*` names the files inside)."""
        return self.folder / CHECKPOINTS_DIR

    @property
    def checkpoint_state(self) -> Path:
        return self.checkpoints / CHECKPOINT_STATE_FILE

    def training_outputs(self) -> tuple[Path, ...]:
        """The files that describe one trained model: a new training removes them first."""
        return self.model, self.train_summary, self.finished, self.evaluation

    def __repr__(self) -> str:
        return f"ModelFiles({str(self.folder)!r})"


# --- one run ---------------------------------------------------------------------------------------

class RunLayout:
    """Every path of one run: `RunLayout(run_id).data_dir`, `.data.array("x_test")`, `.model_dir("cnn")`, ..."""

    def __init__(self, run_id: str, *, folder: Path | None = None):
        """`folder`: where the run's files are when not at `$TL_HOME/runs/<run_key>/` (a run of an older version,
        see `run_folder_candidates`)."""
        self.run_id = run_id
        self.key = config.run_key(run_id)   # validates the id (BadInput when empty)
        self._folder = Path(folder) if folder is not None else None

    @property
    def folder(self) -> Path:
        """`$TL_HOME/runs/<run_key>/`."""
        return self._folder if self._folder is not None else runs_root() / self.key

    @property
    def settings_file(self) -> Path:
        return self.folder / SETTINGS_FILE

    @property
    def data_dir(self) -> Path:
        return self.folder / DATA_DIR

    @property
    def data(self) -> DataFiles:
        return DataFiles(self.data_dir)

    def data_file(self, name: str) -> Path:
        """A prepared array (`x_test`, ...) or `meta`."""
        return self.data.meta if name == "meta" else self.data.array(name)

    @property
    def models_dir(self) -> Path:
        return self.folder / MODELS_DIR

    def model_dir(self, variant: str) -> Path:
        return self.models_dir / get_variant(variant).name

    def model(self, variant: str) -> ModelFiles:
        return ModelFiles(self.model_dir(variant))

    def model_file(self, variant: str) -> Path:
        return self.model(variant).model

    def evaluation_file(self, variant: str) -> Path:
        return self.model(variant).evaluation

    def predictions_file(self, variant: str) -> Path:
        return self.model(variant).predictions

    @property
    def report_dir(self) -> Path:
        return self.folder / REPORT_DIR

    @property
    def report_index(self) -> Path:
        return self.report_dir / REPORT_INDEX

    @property
    def report_url_path(self) -> str:
        """The report's path relative to `$TL_HOME`, URL style: `runs/<key>/report/index.html`."""
        return str(PurePosixPath(RUNS_DIR, self.key, REPORT_DIR, REPORT_INDEX))

    def __repr__(self) -> str:
        return f"RunLayout({self.run_id!r})"


def report_url(base_url: str, run_id: str) -> str:
    """The run's report inside the Airflow UI at `base_url` (served by the retraining-reports plugin)."""
    return f"{base_url.rstrip('/')}{REPORTS_URL_PREFIX}/{quote(RunLayout(run_id).report_url_path)}"


def run_folder_candidates(run_id: str) -> list[Path]:
    """Where a run's folder may be: today's collision-free key, then the slug-only key of older versions."""
    legacy = config.file_name_slug(run_id, 200)
    return [RunLayout(run_id).folder] + ([runs_root() / legacy] if legacy else [])
