"""A webhook receiver's signature check, as docs/api.md documents it (copied from there):
the tests verify every POST with it, so the documented procedure is the one tested."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> str:
    """Return the delivery's webhook-id, or raise ValueError."""
    msg_id = headers["webhook-id"]
    stamp = headers["webhook-timestamp"]
    if abs((time.time() if now is None else now) - int(stamp)) > 5 * 60:
        raise ValueError("timestamp too old (or too new): a replay?")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{stamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for candidate in headers["webhook-signature"].split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return msg_id
    raise ValueError("no valid signature")
