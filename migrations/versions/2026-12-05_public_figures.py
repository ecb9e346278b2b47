"""public figures: one stored snapshot per campaign and publication period, so every server process publishes the
same figures until the next boundary (a confirmation no longer shows in public the moment it happens)

Revision ID: 3f9a1d7c5e20
Revises: 3c9a7d2e5f10
Create Date: 2026-12-05 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '3f9a1d7c5e20'
down_revision = '3c9a7d2e5f10'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'public_figures',
        sa.Column('campaign', sa.String(length=64), nullable=False),
        sa.Column('starts_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('confirmed', sa.Integer(), nullable=False),
        sa.Column('by_country', sa.Text(), nullable=False),
        sa.Column('by_day', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('campaign', 'starts_at', name=op.f('pk_public_figures')),
    )


def downgrade() -> None:
    op.drop_table('public_figures')
