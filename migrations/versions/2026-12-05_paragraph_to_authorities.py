"""signatures.paragraph_to_authorities: whether the signer's own paragraph goes into letters to the authorities of
Kazakhstan and its embassies (false when the signer keeps it out). Rows signed before say yes, as they were sent.

Revision ID: 3f1c9d2e7b55
Revises: 9ba8fd15ef62
Create Date: 2026-12-05 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '3f1c9d2e7b55'
down_revision = '9ba8fd15ef62'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('signatures', schema=None) as batch_op:
        batch_op.add_column(sa.Column('paragraph_to_authorities', sa.Boolean(), server_default=sa.true(),
                                      nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('signatures', schema=None) as batch_op:
        batch_op.drop_column('paragraph_to_authorities')
