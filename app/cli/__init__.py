"""The `campaign` command: database, server, outbox, stats and checks for operators (operations.py), accounts,
exports, erasure, retention, letters and demo data for organisers (data.py), the delivery ledger (ledger.py).

Every command builds its objects from one Settings (the CAMPAIGN_* environment) and owns its transactions.
"""

from app.cli import operations  # noqa: F401, I001 - importing registers the commands, operators' first
from app.cli import data  # noqa: F401, E402
from app.cli import ledger  # noqa: F401, E402
from app.cli.base import app

__all__ = ["app"]
