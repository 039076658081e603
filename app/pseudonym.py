"""Optional pseudonymisation of stored DICOM UIDs (RADLENS_UID_PSEUDONYM_KEY).

A site that sets a pseudonym key stores ``2.25.<int>`` in place of each Study, Series and
SOP Instance UID, where the integer is the first 128 bits of HMAC-SHA256(site key, UID): a
valid UID (under the UUID-derived root 2.25, at most 44 characters) that is stable, so
dedupe and the study filter keep working (the filter value is hashed the same way), and
that cannot be reversed or recomputed without the key. Transfer syntax and SOP class UIDs
name standards, not instances, and are kept as they are.
"""

from __future__ import annotations

import hashlib
import hmac


def pseudonym_key_id(key: bytes) -> str:
    """A 16-hex-character id of a pseudonym key, recorded with each row it pseudonymised: it
    tells rows made under different keys apart and reveals nothing about the key (an HMAC
    under the key of a fixed label, not a hash of the key itself)."""
    return hmac.new(key, b"radlens pseudonym key id", hashlib.sha256).hexdigest()[:16]


def pseudonymise_uid(uid: str | None, key: bytes | None) -> str | None:
    """The pseudonym of ``uid`` under ``key``; ``uid`` unchanged when either is empty."""
    if not uid or not key:
        return uid
    digest = hmac.new(key, uid.strip().encode("ascii", "replace"), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"
