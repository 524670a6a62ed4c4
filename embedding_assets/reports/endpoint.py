"""Where an embedding endpoint is: in this process, on this machine, on a private network,
or in a public cloud. It decides who sees the rows' text and whether tokens are billed.

Classification reads the address only; it never resolves a name. A name that resolves to a
private address today may not tomorrow, and a DNS lookup would make the verdict depend on
where the command runs. Names that are private by convention (`.local`, `.internal`,
single-label names like a Docker service `ollama`) count as private.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from ..config import ModelConfig

EndpointKind = Literal["local", "private-network", "public-cloud"]

OPENAI_DEFAULT_HOST = "api.openai.com"
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
# RFC 6762 (.local), RFC 8375 (.home.arpa), and suffixes commonly kept off the public DNS.
_PRIVATE_SUFFIXES = (
    ".local",
    ".internal",
    ".lan",
    ".home.arpa",
    ".intranet",
    ".corp",
    ".localdomain",
)
# RFC 6598 shared address space (carrier-grade NAT, Tailscale): not routed on the internet,
# but `ipaddress` does not count it as private.
_SHARED_SPACE = ipaddress.ip_network("100.64.0.0/10")


@dataclass(frozen=True)
class Endpoint:
    kind: EndpointKind
    host: str  # host[:port], or "in-process"; never credentials or a path

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "host": self.host}


def classify_host(host: str) -> EndpointKind:
    """Classify a bare host name or IP address (IPv6 with or without brackets)."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if not name:
        return "local"  # no host: a unix socket or a relative URL, i.e. this machine
    try:
        address = ipaddress.ip_address(name.split("%")[0])  # drop an IPv6 zone id
    except ValueError:
        if name in _LOCAL_NAMES or name.endswith(".localhost"):
            return "local"
        if "." not in name or name.endswith(_PRIVATE_SUFFIXES):
            return "private-network"
        return "public-cloud"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback or address.is_unspecified:
        return "local"
    if address.is_private or address.is_link_local or address in _SHARED_SPACE:
        return "private-network"
    return "public-cloud"


def classify_address(address: str) -> EndpointKind:
    """Classify a URL (`http://10.0.0.5:8080/v1`, `unix:///run/x.sock`) or a bare host."""
    if "://" not in address:
        return classify_host(address)
    parts = urlsplit(address)
    if "unix" in parts.scheme or parts.scheme in ("file", "ipc"):  # e.g. http+unix://
        return "local"
    return classify_host(parts.hostname or "")


def _display_host(base_url: str) -> str:
    """host[:port] of a URL: no user:password@, no path or query (they may hold secrets)."""
    parts = urlsplit(base_url)
    host = parts.hostname or parts.scheme or "unknown"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host


def endpoint_of(model: ModelConfig) -> Endpoint:
    """Where the configured model runs. sentence-transformers and hash run in this process;
    the openai provider with no base_url talks to api.openai.com."""
    if model.provider != "openai":
        return Endpoint("local", "in-process")
    if model.base_url is None:
        return Endpoint("public-cloud", OPENAI_DEFAULT_HOST)
    return Endpoint(classify_address(model.base_url), _display_host(model.base_url))
