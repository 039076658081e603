"""What pynetdicom logs, kept free of identifiers.

pynetdicom logs, at DEBUG, every C-STORE's Affected SOP Instance UID (the UID as received, in
the log of a site that pseudonymises UIDs before storing them) and, at WARNING or ERROR, any
UID it finds non-conformant with its value ("Non-conformant 'Affected SOP Instance UID' value
'...'": letters or a UUID an anonymiser wrote, sometimes an MRN) (QA round 31). Its logger is
kept at INFO unless someone set its level explicitly (as Pillow's, models/preprocessing.py),
and the value of such a record is left out, its element named.
"""

from __future__ import annotations

import logging
import re

# pynetdicom.utils.set_uid: f"Non-conformant '{name}' value '{value}'" and
# f"Invalid '{name}' value '{value}' - {reason}"
_UID_VALUE = re.compile(r"^((?:Non-conformant|Invalid) '[^']*' value) '.*?'( - |$)", re.DOTALL)


def _without_values(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    redacted = _UID_VALUE.sub(r"\1 (not shown)\2", message)
    if redacted != message:
        record.msg, record.args = redacted, ()
    return True


def quiet_pynetdicom() -> None:
    """Apply the rules above (idempotent; called where radlens uses pynetdicom)."""
    root = logging.getLogger("pynetdicom")
    if root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    utils = logging.getLogger("pynetdicom.utils")
    if _without_values not in utils.filters:
        utils.addFilter(_without_values)
