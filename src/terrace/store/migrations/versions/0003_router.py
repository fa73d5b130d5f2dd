"""The router: which deployment a deployment replaced, why one was rolled back, and the
workspaces' custom domains.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("replaces_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("failure", sa.Text(), nullable=True))
    op.create_table(
        "domains",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_domains_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_domains")),
        sa.UniqueConstraint("name", name=op.f("uq_domains_name")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_domains_workspace_id"), "domains", ["workspace_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_domains_workspace_id"), table_name="domains")
    op.drop_table("domains")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("failure")
        batch.drop_column("replaces_id")
