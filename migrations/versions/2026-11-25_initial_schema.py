"""initial schema

Revision ID: a6cc5bc2fd27
Revises:
Create Date: 2026-11-25 20:27:24.543985
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = 'a6cc5bc2fd27'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('export_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('organiser', sa.String(length=100), nullable=False),
    sa.Column('campaign', sa.String(length=64), nullable=False),
    sa.Column('what', sa.String(length=200), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_export_log'))
    )
    op.create_table('organisers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('token_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_organisers')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_organisers_token_hash'))
    )
    op.create_table('signature_counts',
    sa.Column('campaign', sa.String(length=64), nullable=False),
    sa.Column('country', sa.String(length=2), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('confirmed', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('campaign', 'country', 'day', name=op.f('pk_signature_counts'))
    )
    op.create_table('signatures',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign', sa.String(length=64), nullable=False),
    sa.Column('email_key', sa.LargeBinary(length=32), nullable=True),
    sa.Column('key_id', sa.String(length=16), nullable=False),
    sa.Column('name_enc', sa.LargeBinary(), nullable=True),
    sa.Column('email_enc', sa.LargeBinary(), nullable=True),
    sa.Column('city_enc', sa.LargeBinary(), nullable=True),
    sa.Column('message_enc', sa.LargeBinary(), nullable=True),
    sa.Column('country', sa.String(length=2), nullable=False),
    sa.Column('language', sa.String(length=2), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('discreet', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('confirmed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('erased_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('confirm_token_hash', sa.LargeBinary(length=32), nullable=True),
    sa.Column('confirm_code_hash', sa.LargeBinary(length=32), nullable=True),
    sa.Column('code_attempts', sa.Integer(), nullable=False),
    sa.Column('confirm_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('manage_token_hash', sa.LargeBinary(length=32), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_signatures')),
    sa.UniqueConstraint('campaign', 'email_key', name=op.f('uq_signatures_campaign_email_key')),
    sa.UniqueConstraint('confirm_token_hash', name=op.f('uq_signatures_confirm_token_hash')),
    sa.UniqueConstraint('manage_token_hash', name=op.f('uq_signatures_manage_token_hash'))
    )
    with op.batch_alter_table('signatures', schema=None) as batch_op:
        batch_op.create_index('ix_signatures_campaign_status_confirmed_at', ['campaign', 'status', 'confirmed_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_signatures_email_key'), ['email_key'], unique=False)

    op.create_table('deliveries',
    sa.Column('signature_id', sa.Integer(), nullable=False),
    sa.Column('target', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['signature_id'], ['signatures.id'], name=op.f('fk_deliveries_signature_id_signatures'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('signature_id', 'target', name=op.f('pk_deliveries'))
    )
    op.create_table('outbox',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('key_id', sa.String(length=16), nullable=False),
    sa.Column('recipient_enc', sa.LargeBinary(), nullable=True),
    sa.Column('message_enc', sa.LargeBinary(), nullable=True),
    sa.Column('signature_id', sa.Integer(), nullable=True),
    sa.Column('target', sa.String(length=64), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['signature_id'], ['signatures.id'], name=op.f('fk_outbox_signature_id_signatures'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox'))
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_signature_id'), ['signature_id'], unique=False)
        batch_op.create_index('ix_outbox_state_next_attempt_at', ['state', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_outbox_target_sent_at', ['target', 'sent_at'], unique=False)

    op.create_table('target_opt_ins',
    sa.Column('signature_id', sa.Integer(), nullable=False),
    sa.Column('target', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['signature_id'], ['signatures.id'], name=op.f('fk_target_opt_ins_signature_id_signatures'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('signature_id', 'target', name=op.f('pk_target_opt_ins'))
    )


def downgrade() -> None:
    op.drop_table('target_opt_ins')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_target_sent_at')
        batch_op.drop_index('ix_outbox_state_next_attempt_at')
        batch_op.drop_index(batch_op.f('ix_outbox_signature_id'))

    op.drop_table('outbox')
    op.drop_table('deliveries')
    with op.batch_alter_table('signatures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_signatures_email_key'))
        batch_op.drop_index('ix_signatures_campaign_status_confirmed_at')

    op.drop_table('signatures')
    op.drop_table('signature_counts')
    op.drop_table('organisers')
    op.drop_table('export_log')
