"""Anchoring the books: sign the hash-chain heads (ledger.chain) with the audit key and keep the anchor outside
the database too — appended to `LEDGER_DATA_DIR/anchors.jsonl` and posted to `ALERT_WEBHOOK_URL` when set.

The audit key is an Ed25519 private key, LEDGER_AUDIT_KEY (base64 of its 32-byte seed). Unset, one is made on
first use in `LEDGER_DATA_DIR/audit.key` (mode 0600): a file outside the database, for a single machine. A
production deployment sets LEDGER_AUDIT_KEY from its secret store, and gives auditors the public key only
(`invledger anchor public-key`).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from pathlib import Path

import httpx
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from integration import alerts
from ledger import chain

log = logging.getLogger("integration.anchors")
ANCHORS_FILE = "anchors.jsonl"
KEY_FILE = "audit.key"
PUBLISH_TIMEOUT_S = 10.0


class AuditKeyError(Exception):
    """The audit key given is not an Ed25519 key (base64 of 32 bytes)."""


def parse_key(text: str) -> Ed25519PrivateKey:
    try:
        seed = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise AuditKeyError("the audit key must be base64 of a 32-byte Ed25519 seed") from None
    if len(seed) != 32:
        raise AuditKeyError("the audit key must be base64 of a 32-byte Ed25519 seed")
    return Ed25519PrivateKey.from_private_bytes(seed)


def new_key_text() -> str:
    key = Ed25519PrivateKey.generate()
    return base64.b64encode(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode()


def audit_key(key_text: str | None, data_dir: Path, *, create: bool = True) -> Ed25519PrivateKey | None:
    """LEDGER_AUDIT_KEY, else the key file under `data_dir` (made when missing and `create`)."""
    if key_text:
        return parse_key(key_text)
    path = data_dir / KEY_FILE
    if not path.exists():
        if not create:
            return None
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new_key_text() + "\n")
        log.warning("audit key created", extra={"path": str(path)})
    return parse_key(path.read_text())


def anchor(engine: sa.Engine, key: Ed25519PrivateKey, *, data_dir: Path, alert_url: str | None,
           made_by: str) -> chain.Anchor:
    """Make an anchor, append it to the anchors file and post it to the alert webhook (a failure to post is
    logged: the anchor is stored and in the file)."""
    made = chain.make_anchor(engine, key, made_by)
    line = made.line()
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / ANCHORS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with os.fdopen(fd, "a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if alert_url:
        text = (f"ledger anchor {made.id}: root {made.root.hex()[:16]}… over {made.accounts} accounts and "
                f"{made.postings} postings")
        try:
            with httpx.Client(timeout=PUBLISH_TIMEOUT_S, follow_redirects=False) as client:
                alerts.post(client, alert_url, {"text": text, "anchor": line})
        except httpx.HTTPError as error:
            log.warning("anchor not posted to the alert webhook", extra={"error": alerts.describe(error)})
    log.info("anchor made", extra={"anchor_id": made.id, "accounts": made.accounts, "postings": made.postings})
    return made


def read_anchors_file(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
