"""ORM schema of the metrics database: runs, per-variant results and their epoch, class, confusion and gate rows.

The Alembic migrations in `migrations/versions/` create exactly this schema; a test compares the two.
"""
from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Constraint names are fixed so that migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# The gate's vocabulary, as the gate_decisions table stores it (tl_tasks.gating.decision decides which).
class Decision:
    """The gate's verdicts, as `decide` returns them in "decision" and the metrics database stores them."""

    PROMOTED = "promoted"    # significantly better than the champion, or forced: the new champion
    BOOTSTRAP = "bootstrap"  # no champion yet in this lineage: the first champion
    KEPT = "kept"            # no confident change (or not published): the champion stays
    REGRESSED = "regressed"  # confidently worse beyond the tolerance
    FAILED = "failed"        # the variant has no test accuracy in this run


DECISIONS = (Decision.PROMOTED, Decision.BOOTSTRAP, Decision.KEPT, Decision.REGRESSED, Decision.FAILED)
# The decisions that make the model the variant's champion (the latest such result in a lineage is the champion).
PROMOTING = (Decision.PROMOTED, Decision.BOOTSTRAP)

# Keys of the runs table's JSON columns that the stages write and the integrations read.
CODE_KEY = "code"      # runs.versions[CODE_KEY] = "<package version>+<git commit>[.dirty-<diff hash>]"
SKIP_KEY = "skipped"   # runs.params[SKIP_KEY] = {"reason": "unchanged", "same_as": <run id>}

class UTCDateTime(sa.types.TypeDecorator):
    """Timezone-aware UTC datetimes on every database (SQLite has no time zones: store UTC, read back as UTC).

    Accepts datetimes (naive ones are taken as UTC) and ISO 8601 strings.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = to_utc(value)
        if dialect.name == "sqlite":
            value = value.replace(tzinfo=None)
        # pendulum (Airflow) datetimes subclass datetime; hand the driver a plain one.
        return datetime(value.year, value.month, value.day, value.hour, value.minute, value.second,
                        value.microsecond, value.tzinfo)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def to_utc(value, name: str = "date") -> datetime:
    """A timezone-aware UTC datetime from a datetime (naive = UTC) or an ISO 8601 string."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{name}={value!r} is not an ISO 8601 date-time such as 2026-01-31T12:00:00+00:00") from None
    if not isinstance(value, datetime):
        raise ValueError(f"{name}={value!r} must be a datetime or an ISO 8601 string such as 2026-01-31T12:00:00+00:00")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 (SQLAlchemy reads this class attribute; never mutated)
        datetime: UTCDateTime,
        dict: sa.JSON,
        list: sa.JSON,
        float: sa.Double,
    }


class Run(Base):
    """One pipeline run (an Airflow DAG run or a command-line run), identified by its run id."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(sa.String(250), unique=True)
    dag_id: Mapped[str | None] = mapped_column(sa.String(250))
    logical_date: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    state: Mapped[str | None] = mapped_column(sa.String(32))
    profile: Mapped[str | None] = mapped_column(sa.String(32))
    params: Mapped[dict | None]
    data_source: Mapped[str | None] = mapped_column(sa.Text)
    data_fingerprint: Mapped[str | None] = mapped_column(sa.String(128))
    # The test set's sha256 (data.fingerprint_test_set): runs compare only within one lineage.
    lineage: Mapped[str | None] = mapped_column(sa.String(80))
    data_summary: Mapped[dict | None]
    class_names: Mapped[list | None]
    seed: Mapped[int | None]
    versions: Mapped[dict | None]
    device: Mapped[str | None] = mapped_column(sa.Text)
    report_path: Mapped[str | None] = mapped_column(sa.Text)
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # Ordering key: coalesce(logical_date, started_at, created_at), kept in step by every write.
    sort_time: Mapped[datetime]

    results: Mapped[list[Result]] = relationship(back_populates="run", cascade="all, delete-orphan",
                                                   passive_deletes=True)

    __table_args__ = (sa.Index("ix_runs_sort_time_id", "sort_time", "id"), sa.Index("ix_runs_lineage", "lineage"))


class Result(Base):
    """One variant's outcome in one run: training, evaluation, failure; unique per (run, variant)."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_pk: Mapped[int] = mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"))
    variant: Mapped[str] = mapped_column(sa.String(100))
    state: Mapped[str] = mapped_column(sa.String(32))
    stage: Mapped[str | None] = mapped_column(sa.String(32))        # stage that failed, when state == "failed"
    error: Mapped[str | None] = mapped_column(sa.Text)
    # training
    weights: Mapped[str | None] = mapped_column(sa.Text)
    model_path: Mapped[str | None] = mapped_column(sa.Text)
    epochs_run: Mapped[int | None]
    best_epoch: Mapped[int | None]
    resumed_from_epoch: Mapped[int | None]
    train_seconds: Mapped[float | None]
    train_info: Mapped[dict | None]                                   # other keys of the train summary
    trained_at: Mapped[datetime | None]
    # evaluation (test split)
    accuracy: Mapped[float | None]
    loss: Mapped[float | None]
    top3_accuracy: Mapped[float | None]
    macro_f1: Mapped[float | None]
    inference_img_per_s: Mapped[float | None]
    model_size_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    class_names: Mapped[list | None]
    misclassified: Mapped[list | None]
    eval_info: Mapped[dict | None]                                    # other keys of the evaluation
    predictions_path: Mapped[str | None] = mapped_column(sa.Text)     # per-image predicted classes (.npy)
    predictions_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    model_sha256: Mapped[str | None] = mapped_column(sa.String(64))   # of model.keras, set when evaluated
    evaluated_at: Mapped[datetime | None]
    # calibration (tl_tasks.training.calibration) and robustness (tl_tasks.training.robustness): NULL for runs evaluated before
    ece: Mapped[float | None]
    ece_scaled: Mapped[float | None]
    temperature: Mapped[float | None]
    robust_accuracy: Mapped[float | None]                             # mean accuracy over the corruption suite
    # both
    params_total: Mapped[int | None] = mapped_column(sa.BigInteger)
    params_trainable: Mapped[int | None] = mapped_column(sa.BigInteger)
    failed_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    run: Mapped[Run] = relationship(back_populates="results")

    __table_args__ = (
        sa.UniqueConstraint("run_pk", "variant"),
        sa.Index("ix_results_variant_run_pk", "variant", "run_pk"),
    )


class EpochMetric(Base):
    """Per-epoch training history of a result."""

    __tablename__ = "epoch_metrics"

    result_id: Mapped[int] = mapped_column(sa.ForeignKey("results.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    loss: Mapped[float | None]
    accuracy: Mapped[float | None]
    val_loss: Mapped[float | None]
    val_accuracy: Mapped[float | None]
    seconds: Mapped[float | None]


class ClassMetric(Base):
    """Per-class precision / recall / F1 on the test split."""

    __tablename__ = "class_metrics"

    result_id: Mapped[int] = mapped_column(sa.ForeignKey("results.id", ondelete="CASCADE"), primary_key=True)
    class_index: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    class_name: Mapped[str] = mapped_column(sa.String(200))
    precision: Mapped[float | None]
    recall: Mapped[float | None]
    f1: Mapped[float | None]
    support: Mapped[int | None]


class ConfusionMatrix(Base):
    """Confusion matrix of a result (counts, rows = true class), one row per result."""

    __tablename__ = "confusion_matrices"

    result_id: Mapped[int] = mapped_column(sa.ForeignKey("results.id", ondelete="CASCADE"), primary_key=True)
    class_names: Mapped[list | None]
    matrix: Mapped[list]


class GateDecision(Base):
    """The gate's verdict on a result (one of `DECISIONS`), and why."""

    __tablename__ = "gate_decisions"

    result_id: Mapped[int] = mapped_column(sa.ForeignKey("results.id", ondelete="CASCADE"), primary_key=True)
    decision: Mapped[str] = mapped_column(sa.String(32))
    champion_run_id: Mapped[str | None] = mapped_column(sa.String(250))
    champion_accuracy: Mapped[float | None]
    accuracy: Mapped[float | None]
    delta: Mapped[float | None]
    tolerance: Mapped[float | None]
    forced: Mapped[bool] = mapped_column(default=False)
    details: Mapped[dict | None]                                      # other keys of the decision
    decided_at: Mapped[datetime]



class ClassChange(Base):
    """Per class, the new model against the champion on that class's test images (tl_tasks.gating.per_class)."""

    __tablename__ = "class_changes"

    result_id: Mapped[int] = mapped_column(sa.ForeignKey("results.id", ondelete="CASCADE"), primary_key=True)
    class_index: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    class_name: Mapped[str] = mapped_column(sa.String(200))
    n: Mapped[int]
    recall: Mapped[float | None]
    champion_recall: Mapped[float | None]
    delta: Mapped[float | None]
    ci_low: Mapped[float | None]
    ci_high: Mapped[float | None]
    fixed: Mapped[int | None]
    broken: Mapped[int | None]
    p_value: Mapped[float | None]
    p_holm: Mapped[float | None]
    significant: Mapped[bool] = mapped_column(default=False)


class RobustnessMetric(Base):
    """Accuracy of a result under one corruption at one severity (tl_tasks.training.robustness)."""

    __tablename__ = "robustness_metrics"

    result_id: Mapped[int] = mapped_column(sa.ForeignKey("results.id", ondelete="CASCADE"), primary_key=True)
    corruption: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    severity: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    accuracy: Mapped[float | None]
