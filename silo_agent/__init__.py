"""Hospital agent: validation, DP-SGD training, masking, local ledger and CLI."""
