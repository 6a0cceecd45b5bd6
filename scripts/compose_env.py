"""Write .env for docker-compose.yaml: .env.example with every empty `NAME=` line filled by a fresh random secret.

    python3 scripts/compose_env.py      # what `make compose-env` runs; refuses to overwrite an existing .env

Standard library only (runs before any venv exists). The file is created with mode 0600.
"""
from __future__ import annotations

import base64
import os
import re
import secrets
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def secret(name: str) -> str:
    """A new value for `name`: a Fernet key for AIRFLOW_FERNET_KEY, otherwise random hex (longer for the JWT secret)."""
    if name == "AIRFLOW_FERNET_KEY":
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    return secrets.token_hex(48 if name == "AIRFLOW_JWT_SECRET" else 24)


def fill(example: str) -> str:
    """`example` with a secret after every line that is only `NAME=`."""
    lines = [line + secret(line[:-1]) if re.fullmatch("[A-Z0-9_]+=", line) else line for line in example.splitlines()]
    return "\n".join(lines) + "\n"


def main(root: Path = PROJECT_ROOT) -> int:
    target = root / ".env"
    if target.exists():
        print(f"{target} exists: edit it, or delete it to generate a new one", file=sys.stderr)
        return 1
    text = fill((root / ".env.example").read_text())
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    print("wrote .env with new secrets; log in as admin with AIRFLOW_ADMIN_PASSWORD from .env")
    return 0


if __name__ == "__main__":
    sys.exit(main())
