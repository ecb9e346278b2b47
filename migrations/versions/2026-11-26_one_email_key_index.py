"""one email_key index: unique (email_key, campaign) replaces unique (campaign, email_key) and the index on
email_key alone, which every signature paid for on insert while the unique index can answer both look-ups

Revision ID: 5d0e7c1b9a43
Revises: a6cc5bc2fd27
Create Date: 2026-11-26 07:00:00
"""

from __future__ import annotations

from alembic import op

revision = '5d0e7c1b9a43'
down_revision = 'a6cc5bc2fd27'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('signatures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_signatures_email_key'))
        batch_op.drop_constraint(batch_op.f('uq_signatures_campaign_email_key'), type_='unique')
        batch_op.create_unique_constraint(batch_op.f('uq_signatures_email_key_campaign'), ['email_key', 'campaign'])


def downgrade() -> None:
    with op.batch_alter_table('signatures', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_signatures_email_key_campaign'), type_='unique')
        batch_op.create_unique_constraint(batch_op.f('uq_signatures_campaign_email_key'), ['campaign', 'email_key'])
        batch_op.create_index(batch_op.f('ix_signatures_email_key'), ['email_key'], unique=False)
