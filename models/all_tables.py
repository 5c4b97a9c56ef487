"""Imports every module that defines tables, so that Base.metadata knows them all (schema creation,
migrations, the schema check)."""

from models import reports, tables, tickets  # noqa: F401
