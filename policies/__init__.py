"""Privacy-policy language, accountant and budget ledger."""
