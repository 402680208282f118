"""Webhook signatures: X-ML-Signature (hex HMAC-SHA256 of the raw body) and Standard Webhooks.

Verification is over the raw request bytes exactly as received — never a re-serialisation of the
parsed JSON (the seed's mistake: any whitespace or key-order difference breaks it). Comparison is
constant-time; several secrets may be configured at once so a secret can be rotated without downtime.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

TIMESTAMP_TOLERANCE_S = 5 * 60


class SignatureError(Exception):
    """The delivery is not signed by any of our secrets (or its timestamp is out of tolerance)."""


def sign(secret: str, body: bytes) -> str:
    """The X-ML-Signature value for `body`: lowercase hex HMAC-SHA256."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _standard_key(secret: str) -> bytes:
    # Standard Webhooks secrets are "whsec_" + base64; any other string is used as raw bytes.
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign_standard(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: "v1," + base64 HMAC-SHA256 of "id.timestamp.body"."""
    message = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(_standard_key(secret), message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secrets: Sequence[str], body: bytes, headers: Mapping[str, str], *,
           now: float | None = None) -> str:
    """Check a delivery's signature; return which scheme matched ("ml" or "standard").

    `headers` must be case-insensitive (litestar's and httpx's are). Raises SignatureError.
    """
    if not secrets:
        raise SignatureError("webhooks are refused: no ML_ENGINE_WEBHOOK_SECRET is configured")
    given = headers.get("x-ml-signature")
    if given is not None:
        given = given.strip().lower()
        if any(hmac.compare_digest(sign(secret, body), given) for secret in secrets):
            return "ml"
        raise SignatureError("X-ML-Signature does not match the body")
    webhook_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (webhook_id and timestamp and signatures):
        raise SignatureError("missing signature: send X-ML-Signature or the webhook-* headers")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not a whole number of seconds") from None
    current = time.time() if now is None else now
    if abs(current - sent_at) > TIMESTAMP_TOLERANCE_S:
        raise SignatureError("webhook-timestamp is more than 5 minutes from now")
    offered = [s.split(",", 1)[1] for s in signatures.split() if s.startswith("v1,")]
    for secret in secrets:
        expected = sign_standard(secret, webhook_id, sent_at, body).split(",", 1)[1]
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return "standard"
    raise SignatureError("webhook-signature does not match the body")
