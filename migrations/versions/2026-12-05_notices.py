"""notices: requests about an address (a repeat signature, an erase request) recorded with the same work whatever
the address, and answered later by mail to the stored address

Revision ID: 3c9a7d2e5f10
Revises: 8b2f4e6a1c07
Create Date: 2026-12-05 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '3c9a7d2e5f10'
down_revision = '8b2f4e6a1c07'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'notices',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('campaign', sa.String(length=64), nullable=True),
        sa.Column('email_keys', sa.LargeBinary(), nullable=False),
        sa.Column('lang', sa.String(length=2), nullable=False),
        sa.Column('discreet', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_notices')),
    )


def downgrade() -> None:
    op.drop_table('notices')
