"""``RADLENS_DICOM_DESTINATIONS``: where radlens C-STOREs its results (app/outbox.py).

Syntax: comma-separated destinations, each ``AE@host:port`` optionally followed by
``/outputs``, where outputs is ``sr`` (the default), ``sc`` or ``sr+sc``::

    PACS@10.0.0.5:104,VIEWER@viewer.local:11112/sr+sc,ARCHIVE@[fd00::5]:104/sc

An IPv6 host is written in brackets. The same AE title may appear once per host and port.
A malformed entry stops start-up with a message that quotes it (the settings validator
calls :func:`parse_destinations`).
"""

from __future__ import annotations

from dataclasses import dataclass

OUTPUT_KINDS = ("sr", "sc")
SYNTAX = "AE@host:port[/sr|/sc|/sr+sc], e.g. PACS@10.0.0.5:104/sr+sc"


@dataclass(frozen=True)
class Destination:
    """One Storage SCP radlens sends results to, and which outputs it gets."""

    ae_title: str
    host: str
    port: int
    outputs: frozenset[str]

    @property
    def name(self) -> str:
        """``AE@host:port``: how the outbox and the logs name the destination."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"

    def wants(self, kind: str) -> bool:
        return kind in self.outputs


def _outputs(text: str, entry: str) -> frozenset[str]:
    kinds = [k.strip().lower() for k in text.split("+")]
    if not kinds or any(k not in OUTPUT_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise ValueError(
            f"outputs must be sr, sc or sr+sc ({SYNTAX}). Received {text!r} in {entry!r}"
        )
    return frozenset(kinds)


def _host_port(text: str, entry: str) -> tuple[str, int]:
    host, colon, port_text = text.rpartition(":")
    if not colon or not host or not port_text.isdigit():
        raise ValueError(f"a destination needs host:port ({SYNTAX}). Received {entry!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"the port must be 1 to 65535. Received {port_text!r} in {entry!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c.isspace() or c in "[]@/" for c in host):
        raise ValueError(f"the host is not a host name or address. Received {entry!r}")
    return host, port


def parse_destination(entry: str) -> Destination:
    """One ``AE@host:port[/outputs]`` entry; ValueError quoting it when malformed."""
    from radlens.app.settings import _ae_title

    text = entry.strip()
    address, slash, outputs_text = text.partition("/")
    title, at, host_port = address.partition("@")
    if not at:
        raise ValueError(
            f"a destination starts with its AE title and @ ({SYNTAX}). Received {entry!r}"
        )
    try:
        ae_title = _ae_title(title)
    except ValueError as exc:
        raise ValueError(f"{exc} (in destination {entry!r})") from None
    host, port = _host_port(host_port, entry)
    outputs = _outputs(outputs_text, entry) if slash else frozenset({"sr"})
    return Destination(ae_title, host, port, outputs)


def parse_destinations(value: str | None) -> list[Destination]:
    """Every destination of ``RADLENS_DICOM_DESTINATIONS``; [] when unset or empty."""
    if value is None or not value.strip():
        return []
    destinations = [parse_destination(entry) for entry in value.split(",")]
    names = [d.name for d in destinations]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"each destination may appear once (list its outputs as sr+sc). "
            f"Received {', '.join(duplicates)} more than once"
        )
    return destinations
