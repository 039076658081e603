"""The identity of an uploaded instance for de-duplication, independent of pseudonymisation.

A prediction is unique per (model name, model version, identity). The identity of a DICOM
instance that has a SOP Instance UID is ``uid:<HMAC-SHA256(dedupe key, that UID)>`` over the
UID *as received*, under the de-duplication key (``RADLENS_DEDUPE_KEY``), which is separate
from the pseudonym key (``RADLENS_UID_PSEUDONYM_KEY``): switching pseudonymisation on or off,
or changing its key, leaves the identity unchanged, so a re-post finds the stored prediction.
Any other input (PNG, JPEG, DICOM without a SOP Instance UID) is ``sha256:<its bytes' sha256>``,
which needs no key (the row stores that sha256 anyway).

The identity is a keyed hash, never the UID: without the key it cannot be recomputed from a
guessed or known UID, so it does not undo pseudonymisation. That is why pseudonymisation
requires a dedupe key (app/settings.py). Without pseudonymisation and without a dedupe key the
UIDs are stored as received anyway, and the identity is an HMAC under :data:`NO_KEY`, a fixed,
public value: it hides nothing the row does not show already.

Changing the dedupe key itself changes every UID identity: instances stored under the old key
are no longer recognised, and each one re-posted after the change is predicted and stored
once more (once: later re-posts find that new row). Rows stored before migration 0010 have no
identity (NULL) and keep the old rule (app/tables.py ``dedupe_key``: the UID as stored), so
they are recognised only by a re-post made in the pseudonymisation state they were stored in.
"""

from __future__ import annotations

import hashlib
import hmac

# The key of identities made while no dedupe key is set (allowed only while UIDs are stored as
# received): public on purpose, see the module docstring.
NO_KEY = b"radlens dedupe identity without a key: UIDs are stored as received"

IDENTITY_LENGTH = 80  # the column's length; "sha256:" + 64 hex = 71, "uid:" + 64 hex = 68


def dedupe_identity(*, sop_instance_uid: str | None, input_sha256: str, key: bytes | None) -> str:
    """The identity of an input for de-duplication: a keyed hash of its SOP Instance UID as
    received (``key`` None: :data:`NO_KEY`), else its bytes' sha256 (see the module docstring).
    """
    uid = sop_instance_uid.strip() if sop_instance_uid else ""
    if uid:
        mac = hmac.new(
            key or NO_KEY,
            b"SOPInstanceUID\x00" + uid.encode("utf-8", "surrogatepass"),
            hashlib.sha256,
        )
        return f"uid:{mac.hexdigest()}"
    return f"sha256:{input_sha256}"
