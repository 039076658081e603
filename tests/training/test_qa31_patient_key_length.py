"""QA round 31: a short RADLENS_PATIENT_HASH_KEY was taken without a word.

A run's splits.csv keeps each image's patient as ``p-`` + 64 bits of HMAC-SHA256(key, id), and
the model's manifest (which ships with the model) a 48-bit check digest of the key. With a key
like ``abc`` whoever has both finds the key by trying keys against the digest, then each
patient id (an MRN of seven digits: ten million tries) against the hashes. The service refuses
its HMAC keys below 16 characters; training now warns of a shorter patient-hash key, naming
the variable and the length (never the key). It is not refused: a split drawn under a key is
only reproduced with that key, so existing runs keep being evaluated.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import string
from itertools import product

import pytest

from radlens.training.data import sources


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "_WARNED_SHORT_KEYS", set(), raising=False)


def test_a_short_key_is_found_from_the_manifest_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Why it matters: the key check recorded in every manifest confirms a guessed key."""
    monkeypatch.setenv(sources.PATIENT_KEY_ENV, "kq")
    recorded = sources.patient_key_check()
    found = next(
        "".join(k)
        for k in product(string.ascii_lowercase, repeat=2)
        if hmac.new("".join(k).encode(), b"radlens-key-check", hashlib.sha256).hexdigest()[:12]
        == recorded
    )
    assert found == "kq"


def test_a_short_key_is_warned_of_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(sources.PATIENT_KEY_ENV, "hospital-key")
    with caplog.at_level(logging.WARNING, logger="radlens.training"):
        assert sources.patient_hash_key() == b"hospital-key"  # still used as given
        sources.patient_hash_key()
    [record] = [r for r in caplog.records if sources.PATIENT_KEY_ENV in r.getMessage()]
    assert "12 characters long" in record.getMessage()
    assert "at least 16" in record.getMessage()
    assert "hospital-key" not in caplog.text


def test_a_long_key_is_not_warned_of(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(sources.PATIENT_KEY_ENV, "x" * 16)
    with caplog.at_level(logging.WARNING, logger="radlens.training"):
        sources.patient_hash_key()
    assert sources.PATIENT_KEY_ENV not in caplog.text
