"""What a stage is handed: one `RunContext` per task (the run's layout, settings, metrics store and Variant objects),
built once, so a stage never looks the same things up again from bare ids."""
from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from tl_tasks.config import Settings
from tl_tasks.errors import MissingInput, first_line
from tl_tasks.layout import RunLayout
from tl_tasks.store import MetricsStore, connect
from tl_tasks.variants import Variant, get_variant

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """One run as a task sees it. `settings` is None only for stages that also serve unprepared runs."""

    run_id: str
    layout: RunLayout
    settings: Settings | None
    store: MetricsStore

    @property
    def variants(self) -> tuple[Variant, ...]:
        """The run's chosen variants, in its settings' order."""
        return tuple(get_variant(name) for name in self.settings.variants)

    def require_prepared(self) -> None:
        if not self.layout.data.meta.is_file():
            raise MissingInput(f"run id {self.run_id!r} was never prepared ({self.layout.data_dir} has no data); "
                               f"run `python -m tl_tasks prepare --run-id {self.run_id}` (or the DAG's prepare_data) "
                               "first")

    def record_failure(self, variant: Variant, stage: str, exc: BaseException) -> None:
        """Record `exc` as the variant's failure in `stage`; a database problem is logged, never raised over it."""
        text = f"{one_line(exc)}\n\n{traceback.format_exc()}"
        try:
            self.store.record_failure(self.run_id, variant.name, stage, text)
        except Exception as store_exc:
            log.error("could not record the %s failure of %s in the metrics database: %s", stage, variant.name,
                      store_exc)


@contextmanager
def open_run(run_id: str, settings: Settings | None = None, *, prepared: bool = True) -> Iterator[RunContext]:
    """The task's RunContext, its store open for the task's duration. `settings` default: the ones the run was
    prepared with (`runs/<key>/settings.json`); with `prepared=False` a run without them gets None."""
    layout = RunLayout(run_id)
    if settings is None and (prepared or layout.settings_file.is_file()):
        settings = load_settings(layout)
    with connect() as store:
        yield RunContext(run_id, layout, settings, store)


def load_settings(layout: RunLayout) -> Settings:
    """The settings a run was prepared with (`runs/<key>/settings.json`, written by the prepare stage)."""
    path = layout.settings_file
    if not path.is_file():
        raise MissingInput(f"{path} is missing: run id {layout.run_id!r} was never prepared; run `python -m tl_tasks "
                           f"prepare --run-id {layout.run_id}` (or the DAG's prepare_data) first")
    return Settings.from_dict(json.loads(path.read_text()))


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(str(exc))}"


def now() -> datetime:
    return datetime.now(UTC)
