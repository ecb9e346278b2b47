"""fewer indexes on the sign path: unique (email_key, campaign) replaces unique (campaign, email_key) and the
index on email_key alone (the one index answers both look-ups), and confirmation links name their row
(security.row_token), so confirm_token_hash needs no unique index. Each random index cost every signature about
a fifth of the writer's time. Links mailed before this revision no longer open; those signers can type their
code, or sign again for a new link.

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
        batch_op.drop_constraint(batch_op.f('uq_signatures_confirm_token_hash'), type_='unique')


def downgrade() -> None:
    with op.batch_alter_table('signatures', schema=None) as batch_op:
        batch_op.create_unique_constraint(batch_op.f('uq_signatures_confirm_token_hash'), ['confirm_token_hash'])
        batch_op.drop_constraint(batch_op.f('uq_signatures_email_key_campaign'), type_='unique')
        batch_op.create_unique_constraint(batch_op.f('uq_signatures_campaign_email_key'), ['campaign', 'email_key'])
        batch_op.create_index(batch_op.f('ix_signatures_email_key'), ['email_key'], unique=False)
