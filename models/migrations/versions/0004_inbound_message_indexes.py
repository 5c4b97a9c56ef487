"""indexes for the per-message duplicate-text check and the per-period counts

Without them the duplicate-text check scans every stored message of the account: at 100,000 stored
messages the pipeline fell from ~150 to ~25 messages/s (benchmarks/district_pipeline.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 18:20:00
"""

from __future__ import annotations

from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.create_index('ix_inbound_messages_sender_sent', ['account', 'sender_id', 'sent_at'], unique=False)
        batch_op.create_index('ix_inbound_messages_received', ['account', 'received_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_inbound_messages_received')
        batch_op.drop_index('ix_inbound_messages_sender_sent')
