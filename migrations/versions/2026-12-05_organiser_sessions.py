"""organiser sessions ended on the server: a browser session is a row (its handle hashed), deleted at sign-out
and at revocation, so a copied organiser cookie stops working at once. Sessions signed before this revision end
(organisers sign in again).

Revision ID: 9ba8fd15ef62
Revises: 3f9a1d7c5e20
Create Date: 2026-12-05 11:40:03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '9ba8fd15ef62'
down_revision = '3f9a1d7c5e20'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'organiser_sessions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('token_hash', sa.LargeBinary(length=32), nullable=False),
        sa.Column('organiser_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['organiser_id'], ['organisers.id'],
                                name=op.f('fk_organiser_sessions_organiser_id_organisers'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_organiser_sessions')),
        sa.UniqueConstraint('token_hash', name=op.f('uq_organiser_sessions_token_hash')),
    )
    with op.batch_alter_table('organiser_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_organiser_sessions_organiser_id'), ['organiser_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('organiser_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_organiser_sessions_organiser_id'))
    op.drop_table('organiser_sessions')
