"""Minimal agent step for the crash test: check, commit the spend, then send.

Run as ``python crash_agent.py LEDGER KEY OUTBOX ROUND NONCE``. It prints
``committed`` after the spend is committed, then waits for a line on stdin
before it writes the update to OUTBOX (standing in for sending it), so the
test can SIGKILL it in between.
"""

from __future__ import annotations

import sys
from pathlib import Path

from policies.identity import load_private_key
from policies.ledger import Ledger
from policies.models import DPParameters

DP = DPParameters(noise_multiplier=1.5, sample_rate=0.2, steps=3, max_grad_norm=1.0)


def main() -> None:
    ledger_path, key_path, outbox, round_text, nonce = sys.argv[1:6]
    round_number = int(round_text)
    key = load_private_key(key_path)
    with Ledger.open(ledger_path, "cleveland", key) as ledger:
        # A spend committed before a crash is resent, not checked or spent again.
        if ledger.find_spend("crash-study", round_number, nonce) is None:
            # A stand-in for the accountant's figure: importing Opacus would
            # triple the start-up time, and accounting is tested elsewhere.
            epsilon = 0.5 * (len(ledger.history("crash-study")) + 1)
            ledger.record_spend(
                "crash-study", round_number, nonce, DP, "rdp", 1e-5, epsilon
            )
        print("committed", flush=True)
        sys.stdin.readline()
        with Path(outbox).open("a") as handle:
            handle.write(f"{round_number} {nonce}\n")
    print("sent", flush=True)


if __name__ == "__main__":
    main()
