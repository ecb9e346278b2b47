"""partial indexes for optional columns: the private-link hash of a signature and the target of a mail are NULL
when those rows are written on the sign path, and each batch rewrote the index pages holding the NULLs (about one
WAL page each per commit)

Revision ID: 8b2f4e6a1c07
Revises: 5d0e7c1b9a43
Create Date: 2026-11-26 07:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '8b2f4e6a1c07'
down_revision = '5d0e7c1b9a43'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('signatures', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_signatures_manage_token_hash'), type_='unique')
    op.create_index('ux_signatures_manage_token_hash', 'signatures', ['manage_token_hash'], unique=True,
                    sqlite_where=sa.text('manage_token_hash IS NOT NULL'),
                    postgresql_where=sa.text('manage_token_hash IS NOT NULL'))
    op.drop_index('ix_outbox_target_sent_at', table_name='outbox')
    op.create_index('ix_outbox_target_sent_at', 'outbox', ['target', 'sent_at'], unique=False,
                    sqlite_where=sa.text('target IS NOT NULL'), postgresql_where=sa.text('target IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_outbox_target_sent_at', table_name='outbox')
    op.create_index('ix_outbox_target_sent_at', 'outbox', ['target', 'sent_at'], unique=False)
    op.drop_index('ux_signatures_manage_token_hash', table_name='signatures')
    with op.batch_alter_table('signatures', schema=None) as batch_op:
        batch_op.create_unique_constraint(batch_op.f('uq_signatures_manage_token_hash'), ['manage_token_hash'])
