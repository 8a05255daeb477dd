"""Hub: round orchestration, policy enforcement, unmasking, audit and CLI."""
