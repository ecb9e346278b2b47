"""Organisers per campaign: organiser_roles (viewer, editor, owner; campaign "*" for every campaign), and the export
log becomes the audit log (action: export, sign_in, ...). Every organiser there is now keeps what they had: owner
of every campaign.

Revision ID: 7a4c2e9b1d63
Revises: 5d2e8c1a9f40
Create Date: 2026-12-05 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '7a4c2e9b1d63'
down_revision = '5d2e8c1a9f40'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'organiser_roles',
        sa.Column('organiser_id', sa.Integer(), nullable=False),
        sa.Column('campaign', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(['organiser_id'], ['organisers.id'], ondelete='CASCADE',
                                name=op.f('fk_organiser_roles_organiser_id_organisers')),
        sa.PrimaryKeyConstraint('organiser_id', 'campaign', name=op.f('pk_organiser_roles')),
    )
    op.execute("INSERT INTO organiser_roles (organiser_id, campaign, role) "
               "SELECT id, '*', 'owner' FROM organisers WHERE revoked_at IS NULL")
    op.rename_table('export_log', 'audit_log')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.add_column(sa.Column('action', sa.String(length=32), server_default='export', nullable=False))


def downgrade() -> None:
    op.execute("DELETE FROM audit_log WHERE action <> 'export'")
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_column('action')
    op.rename_table('audit_log', 'export_log')
    op.drop_table('organiser_roles')
