"""What the key-at-rest KDF costs: seconds per 1,000 keys for -X and for opening them.

Run:  .venv/bin/python bench/kdf.py [--keys 40]

Measures the keystore functions the handlers call, no database: encrypt_pem (what
-X does to each stored key), decrypt_pem (-Y) and load_key (what issuing,
distributing and exporting do to an encrypted key), each on --keys keys (EC on
[x509] ec_curve's default and RSA 2048, cycled), in CPU seconds scaled to 1,000 keys; at
keystore.KDF_ROUNDS and at 2,048 PBKDF2 iterations, cryptography's
BestAvailableEncryption that stored keys had before.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))

from serverpki import keystore, x509util  # noqa: E402

PASSPHRASE = b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + b"b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n" * 8
OLD_ROUNDS = 2048


def per_thousand(fn, items) -> float:
    start = time.process_time()  # CPU time: the figure holds on a machine others load too
    for item in items:
        fn(item)
    return (time.process_time() - start) / len(items) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=40, help="keys measured per figure (default 40)")
    args = parser.parse_args()
    pool = [x509util.new_key("ec", ec_curve="secp384r1") for _ in range(3)] + [x509util.new_key("rsa")]
    clear = [keystore.dump_key(pool[i % len(pool)]) for i in range(args.keys)]
    print(f"{args.keys} keys each (3 EC P-384 : 1 RSA 2048), CPU seconds per 1,000 keys")
    print(f"{'PBKDF2 rounds':>14} {'-X encrypt':>11} {'-Y decrypt':>11} {'open (load)':>12}")
    rows = {}
    for rounds in (OLD_ROUNDS, keystore.KDF_ROUNDS):
        keystore_rounds, keystore.KDF_ROUNDS = keystore.KDF_ROUNDS, rounds
        try:
            x = per_thousand(lambda pem: keystore.encrypt_pem(pem, PASSPHRASE), clear)
            encrypted = [keystore.encrypt_pem(pem, PASSPHRASE) for pem in clear]
        finally:
            keystore.KDF_ROUNDS = keystore_rounds
        y = per_thousand(lambda pem: keystore.decrypt_pem(pem, PASSPHRASE), encrypted)
        load = per_thousand(lambda pem: keystore.load_key(pem, PASSPHRASE), encrypted)
        rows[rounds] = (x, y, load)
        print(f"{rounds:>14,} {x:>11.1f} {y:>11.1f} {load:>12.1f}")
    old, new = rows[OLD_ROUNDS], rows[keystore.KDF_ROUNDS]
    print(f"an attacker's guess costs {keystore.KDF_ROUNDS / OLD_ROUNDS:.0f} times as much; "
          f"opening one key takes {new[2]:.0f} ms instead of {old[2]:.1f} ms")


if __name__ == "__main__":
    main()
