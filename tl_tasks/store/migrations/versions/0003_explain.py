"""What explains a change: per-class comparisons with the champion (class_changes), accuracy under the corruption
suite (robustness_metrics) and calibration and robustness summaries on results (ece, ece_scaled, temperature,
robust_accuracy).

Only tables and nullable columns are added: every existing row is kept, and results evaluated before this
revision read as "not measured" (NULL, no rows).

Revision ID: 0003_explain
Revises: 0002_lineage
Create Date: 2026-12-07
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_explain"
down_revision = "0002_lineage"
branch_labels = None
depends_on = None

_RESULT_COLUMNS = ("ece", "ece_scaled", "temperature", "robust_accuracy")


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        for name in _RESULT_COLUMNS:
            batch.add_column(sa.Column(name, sa.Double(), nullable=True))
    op.create_table(
        "class_changes",
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("class_index", sa.Integer(), nullable=False),
        sa.Column("class_name", sa.String(200), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        *(sa.Column(name, sa.Double(), nullable=True)
          for name in ("recall", "champion_recall", "delta", "ci_low", "ci_high")),
        sa.Column("fixed", sa.Integer(), nullable=True),
        sa.Column("broken", sa.Integer(), nullable=True),
        sa.Column("p_value", sa.Double(), nullable=True),
        sa.Column("p_holm", sa.Double(), nullable=True),
        sa.Column("significant", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], name="fk_class_changes_result_id_results",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("result_id", "class_index", name="pk_class_changes"),
    )
    op.create_table(
        "robustness_metrics",
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("corruption", sa.String(64), nullable=False),
        sa.Column("severity", sa.Integer(), nullable=False),
        sa.Column("accuracy", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], name="fk_robustness_metrics_result_id_results",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("result_id", "corruption", "severity", name="pk_robustness_metrics"),
    )


def downgrade() -> None:
    op.drop_table("robustness_metrics")
    op.drop_table("class_changes")
    with op.batch_alter_table("results") as batch:
        for name in reversed(_RESULT_COLUMNS):
            batch.drop_column(name)
