"""public figures: letters per target in each period's snapshot, so the public page's per-target letter counts
follow the same schedule as the other public figures (never one letter at a time)

Revision ID: 7b4e2f9c1d63
Revises: 7a4c2e9b1d63
Create Date: 2026-12-05 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '7b4e2f9c1d63'
down_revision = '7a4c2e9b1d63'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('public_figures') as batch:
        batch.add_column(sa.Column('by_target', sa.Text(), server_default='{}', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('public_figures') as batch:
        batch.drop_column('by_target')
