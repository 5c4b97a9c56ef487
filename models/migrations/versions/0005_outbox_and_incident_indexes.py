"""indexes for the sender's per-minute and per-day counts, echo lookups, and joining open incidents

Without them each of these scans every row the account ever sent, or every incident the station ever
had: the sender counts sent group messages on every round, so a station's sender grew slower with every
day of history (in the district benchmark a round's reads took longer phase after phase).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 23:00:00
"""

from __future__ import annotations

from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_sent', ['account', 'status', 'is_room', 'sent_at'], unique=False)
        batch_op.create_index('ix_outbox_sent_message', ['account', 'sent_message_id'], unique=False)
    with op.batch_alter_table('incidents', schema=None) as batch_op:
        batch_op.create_index('ix_incidents_room_route', ['station_id', 'room_id', 'route_id', 'created_at'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('incidents', schema=None) as batch_op:
        batch_op.drop_index('ix_incidents_room_route')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_sent_message')
        batch_op.drop_index('ix_outbox_sent')
