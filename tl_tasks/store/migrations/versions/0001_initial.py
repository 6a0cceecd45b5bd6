"""Initial schema: runs, results, epoch_metrics, class_metrics, confusion_matrices, gate_decisions.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("dag_id", sa.String(250), nullable=True),
        sa.Column("logical_date", TS, nullable=True),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("state", sa.String(32), nullable=True),
        sa.Column("profile", sa.String(32), nullable=True),
        sa.Column("params", sa.JSON(), nullable=True),
        sa.Column("data_source", sa.Text(), nullable=True),
        sa.Column("data_fingerprint", sa.String(128), nullable=True),
        sa.Column("data_summary", sa.JSON(), nullable=True),
        sa.Column("class_names", sa.JSON(), nullable=True),
        sa.Column("seed", sa.Integer(), nullable=True),
        sa.Column("versions", sa.JSON(), nullable=True),
        sa.Column("device", sa.Text(), nullable=True),
        sa.Column("report_path", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("sort_time", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.UniqueConstraint("run_id", name="uq_runs_run_id"),
    )
    op.create_index("ix_runs_sort_time_id", "runs", ["sort_time", "id"])

    op.create_table(
        "results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(100), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("stage", sa.String(32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("weights", sa.Text(), nullable=True),
        sa.Column("model_path", sa.Text(), nullable=True),
        sa.Column("epochs_run", sa.Integer(), nullable=True),
        sa.Column("best_epoch", sa.Integer(), nullable=True),
        sa.Column("resumed_from_epoch", sa.Integer(), nullable=True),
        sa.Column("train_seconds", sa.Double(), nullable=True),
        sa.Column("train_info", sa.JSON(), nullable=True),
        sa.Column("trained_at", TS, nullable=True),
        sa.Column("accuracy", sa.Double(), nullable=True),
        sa.Column("loss", sa.Double(), nullable=True),
        sa.Column("top3_accuracy", sa.Double(), nullable=True),
        sa.Column("macro_f1", sa.Double(), nullable=True),
        sa.Column("inference_img_per_s", sa.Double(), nullable=True),
        sa.Column("model_size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("class_names", sa.JSON(), nullable=True),
        sa.Column("misclassified", sa.JSON(), nullable=True),
        sa.Column("eval_info", sa.JSON(), nullable=True),
        sa.Column("evaluated_at", TS, nullable=True),
        sa.Column("params_total", sa.BigInteger(), nullable=True),
        sa.Column("params_trainable", sa.BigInteger(), nullable=True),
        sa.Column("failed_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["run_pk"], ["runs.id"], name="fk_results_run_pk_runs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_results"),
        sa.UniqueConstraint("run_pk", "variant", name="uq_results_run_pk_variant"),
    )
    op.create_index("ix_results_variant_run_pk", "results", ["variant", "run_pk"])

    op.create_table(
        "epoch_metrics",
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Double(), nullable=True),
        sa.Column("accuracy", sa.Double(), nullable=True),
        sa.Column("val_loss", sa.Double(), nullable=True),
        sa.Column("val_accuracy", sa.Double(), nullable=True),
        sa.Column("seconds", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], name="fk_epoch_metrics_result_id_results",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("result_id", "epoch", name="pk_epoch_metrics"),
    )

    op.create_table(
        "class_metrics",
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("class_index", sa.Integer(), nullable=False),
        sa.Column("class_name", sa.String(200), nullable=False),
        sa.Column("precision", sa.Double(), nullable=True),
        sa.Column("recall", sa.Double(), nullable=True),
        sa.Column("f1", sa.Double(), nullable=True),
        sa.Column("support", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], name="fk_class_metrics_result_id_results",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("result_id", "class_index", name="pk_class_metrics"),
    )

    op.create_table(
        "confusion_matrices",
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("class_names", sa.JSON(), nullable=True),
        sa.Column("matrix", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], name="fk_confusion_matrices_result_id_results",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("result_id", name="pk_confusion_matrices"),
    )

    op.create_table(
        "gate_decisions",
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(32), nullable=False),
        sa.Column("champion_run_id", sa.String(250), nullable=True),
        sa.Column("champion_accuracy", sa.Double(), nullable=True),
        sa.Column("accuracy", sa.Double(), nullable=True),
        sa.Column("delta", sa.Double(), nullable=True),
        sa.Column("tolerance", sa.Double(), nullable=True),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("decided_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], name="fk_gate_decisions_result_id_results",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("result_id", name="pk_gate_decisions"),
    )


def downgrade() -> None:
    for table in ("gate_decisions", "confusion_matrices", "class_metrics", "epoch_metrics"):
        op.drop_table(table)
    op.drop_index("ix_results_variant_run_pk", table_name="results")
    op.drop_table("results")
    op.drop_index("ix_runs_sort_time_id", table_name="runs")
    op.drop_table("runs")
