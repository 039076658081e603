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


def pseudonymise_uid(uid: str | None, key: bytes | None) -> str | None:
    """The pseudonym of ``uid`` under ``key``; ``uid`` unchanged when either is empty."""
    if not uid or not key:
        return uid
    digest = hmac.new(key, uid.strip().encode("ascii", "replace"), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"
