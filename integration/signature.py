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

import msgspec

TIMESTAMP_TOLERANCE_S = 5 * 60
WEBHOOK_ID_MAX_CHARS = 256  # the Standard Webhooks ids are short (msg_ + a few dozen); a key, not a payload


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


SCHEMES = ("ml", "standard")


class Verified(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery whose signature checked out: which scheme signed it, and what that signature covers.

    `webhook_id` is the `webhook-id` header only when the Standard Webhooks signature (which covers it) verified
    the delivery; under X-ML-Signature, which covers the body alone, it is None whatever headers came along, so
    no unsigned header can make a captured delivery look new (contract §6).
    """

    scheme: str
    webhook_id: str | None = None


def _ascii(value: str) -> bytes:
    # Headers arrive as latin-1 text: a non-ASCII signature can never match, and compare_digest refuses
    # non-ASCII str (TypeError, once a 500). Compared as bytes, it is simply a mismatch.
    return value.encode("latin-1", "replace")


def verify(secrets: Sequence[str], body: bytes, headers: Mapping[str, str], *,
           schemes: Sequence[str] = SCHEMES, now: float | None = None) -> Verified:
    """Check a delivery's signature under the accepted `schemes`; raise SignatureError if none verifies it.

    A delivery carrying `webhook-signature` is judged by the Standard Webhooks scheme alone (it covers the id
    and the time too); otherwise by X-ML-Signature. `headers` must be case-insensitive (litestar's and httpx's
    are).
    """
    if not secrets:
        raise SignatureError("webhooks are refused: no ML_ENGINE_WEBHOOK_SECRET is configured")
    if headers.get("webhook-signature") is not None and "standard" in schemes:
        return _verify_standard(secrets, body, headers, now)
    given = headers.get("x-ml-signature")
    if given is not None and "ml" in schemes:
        offered = _ascii(given.strip().lower())
        if any(hmac.compare_digest(sign(secret, body).encode(), offered) for secret in secrets):
            return Verified(scheme="ml")
        raise SignatureError("X-ML-Signature does not match the body")
    if "ml" not in schemes:
        raise SignatureError("missing signature: send the Standard Webhooks headers (webhook-id, webhook-timestamp, "
                             "webhook-signature); X-ML-Signature alone is not accepted here")
    raise SignatureError("missing signature: send X-ML-Signature or the webhook-* headers")


def _verify_standard(secrets: Sequence[str], body: bytes, headers: Mapping[str, str], now: float | None) -> Verified:
    webhook_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (webhook_id and timestamp and signatures):
        raise SignatureError("incomplete Standard Webhooks headers: webhook-id, webhook-timestamp and "
                             "webhook-signature are all required")
    if not webhook_id.isascii() or not webhook_id.isprintable() or len(webhook_id) > WEBHOOK_ID_MAX_CHARS:
        raise SignatureError(f"webhook-id must be printable ASCII of at most {WEBHOOK_ID_MAX_CHARS} characters")
    if not (timestamp.isascii() and timestamp.isdigit()):
        raise SignatureError("webhook-timestamp is not a whole number of seconds")
    sent_at = int(timestamp)
    current = time.time() if now is None else now
    if abs(current - sent_at) > TIMESTAMP_TOLERANCE_S:
        raise SignatureError("webhook-timestamp is more than 5 minutes from now")
    offered = [_ascii(s.split(",", 1)[1]) for s in signatures.split() if s.startswith("v1,")]
    for secret in secrets:
        expected = sign_standard(secret, webhook_id, sent_at, body).split(",", 1)[1].encode()
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return Verified(scheme="standard", webhook_id=webhook_id)
    raise SignatureError("webhook-signature does not match the body")
