"""The delivery ledger: letter_ledger (a signer's letter to a target by a channel) replaces deliveries (which held
"sent for me" only); pack_deliveries (an organisation's pack delivered) and replies (an official's answer).
Each row of deliveries becomes a ledger row with channel "sent".

Revision ID: 5d2e8c1a9f40
Revises: 3f1c9d2e7b55
Create Date: 2026-12-05 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '5d2e8c1a9f40'
down_revision = '3f1c9d2e7b55'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'letter_ledger',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('signature_id', sa.Integer(), nullable=True),
        sa.Column('campaign', sa.String(length=64), nullable=False),
        sa.Column('target', sa.String(length=64), nullable=False),
        sa.Column('channel', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('outbox_id', sa.Integer(), nullable=True),
        sa.Column('bounced_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['signature_id'], ['signatures.id'], ondelete='SET NULL',
                                name=op.f('fk_letter_ledger_signature_id_signatures')),
        sa.ForeignKeyConstraint(['outbox_id'], ['outbox.id'], ondelete='SET NULL',
                                name=op.f('fk_letter_ledger_outbox_id_outbox')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_letter_ledger')),
        sa.UniqueConstraint('signature_id', 'target', 'channel', name='uq_letter_ledger_signer_target_channel'),
    )
    op.create_index('ix_letter_ledger_campaign_target_channel', 'letter_ledger', ['campaign', 'target', 'channel'])
    op.execute(
        "INSERT INTO letter_ledger (signature_id, campaign, target, channel, created_at) "
        "SELECT d.signature_id, s.campaign, d.target, 'sent', d.created_at "
        "FROM deliveries d JOIN signatures s ON s.id = d.signature_id"
    )
    op.drop_table('deliveries')
    op.create_table(
        'pack_deliveries',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('campaign', sa.String(length=64), nullable=False),
        sa.Column('target', sa.String(length=64), nullable=False),
        sa.Column('delivered_on', sa.Date(), nullable=False),
        sa.Column('channel', sa.String(length=16), nullable=False),
        sa.Column('reference', sa.String(length=200), nullable=True),
        sa.Column('supporters', sa.Integer(), nullable=False),
        sa.Column('named', sa.Integer(), nullable=False),
        sa.Column('recorded_by', sa.String(length=100), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_pack_deliveries')),
    )
    op.create_index('ix_pack_deliveries_campaign_target', 'pack_deliveries', ['campaign', 'target'])
    op.create_table(
        'replies',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('campaign', sa.String(length=64), nullable=False),
        sa.Column('target', sa.String(length=64), nullable=False),
        sa.Column('received_on', sa.Date(), nullable=False),
        sa.Column('summary', sa.Text(), nullable=False),
        sa.Column('scan', sa.LargeBinary(), nullable=True),
        sa.Column('scan_type', sa.String(length=32), nullable=True),
        sa.Column('public', sa.Boolean(), nullable=False),
        sa.Column('recorded_by', sa.String(length=100), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_replies')),
    )
    op.create_index('ix_replies_campaign_target', 'replies', ['campaign', 'target'])


def downgrade() -> None:
    op.drop_index('ix_replies_campaign_target', table_name='replies')
    op.drop_table('replies')
    op.drop_index('ix_pack_deliveries_campaign_target', table_name='pack_deliveries')
    op.drop_table('pack_deliveries')
    op.create_table(
        'deliveries',
        sa.Column('signature_id', sa.Integer(), nullable=False),
        sa.Column('target', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['signature_id'], ['signatures.id'], ondelete='CASCADE',
                                name=op.f('fk_deliveries_signature_id_signatures')),
        sa.PrimaryKeyConstraint('signature_id', 'target', name=op.f('pk_deliveries')),
    )
    op.execute(
        "INSERT INTO deliveries (signature_id, target, created_at) SELECT signature_id, target, created_at "
        "FROM letter_ledger WHERE channel = 'sent' AND signature_id IS NOT NULL"
    )
    op.drop_index('ix_letter_ledger_campaign_target_channel', table_name='letter_ledger')
    op.drop_table('letter_ledger')
