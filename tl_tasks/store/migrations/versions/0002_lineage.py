"""Lineages and per-image results: runs.lineage (test-set fingerprint), results.predictions_* and model_sha256.

Existing runs keep every row; those with a data fingerprint but no test-set fingerprint get a legacy lineage
of their own ("legacy-" + the first 16 hex digits of the data fingerprint), so they are never compared with
runs whose test set is known.

Revision ID: 0002_lineage
Revises: 0001
Create Date: 2026-12-04
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_lineage"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("lineage", sa.String(80), nullable=True))
        batch.create_index("ix_runs_lineage", ["lineage"])
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("predictions_path", sa.Text(), nullable=True))
        batch.add_column(sa.Column("predictions_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("model_sha256", sa.String(64), nullable=True))
    op.execute("UPDATE runs SET lineage = 'legacy-' || substr(data_fingerprint, 1, 16) "
               "WHERE data_fingerprint IS NOT NULL AND lineage IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("model_sha256")
        batch.drop_column("predictions_sha256")
        batch.drop_column("predictions_path")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_lineage")
        batch.drop_column("lineage")
