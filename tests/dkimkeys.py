"""Test DKIM keys and a DNS that answers only for them (dkimpy's injectable lookup)."""

from __future__ import annotations

import functools

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


@functools.lru_cache(maxsize=None)
def keypair(domain: str) -> tuple[bytes, str]:
    """(private PEM, TXT record) for `domain`; one RSA key per domain per test session."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = b"".join(line for line in der.splitlines() if not line.startswith(b"-----")).decode()
    return pem, f"v=DKIM1; k=rsa; p={body}"


class FakeDNS:
    def __init__(self, records: dict[str, str] | None = None) -> None:
        self.records = dict(records or {})

    def publish(self, selector: str, domain: str, txt: str) -> None:
        self.records[f"{selector}._domainkey.{domain}."] = txt

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        value = self.records.get(name.decode() if isinstance(name, bytes) else name)
        return value.encode() if value is not None else None


def sign(raw: bytes, domain: str, selector: str = "sel") -> bytes:
    pem, _ = keypair(domain)
    return dkim.sign(raw, selector.encode(), domain.encode(), pem,
                     include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + raw


def dns_for(*domains: str, selector: str = "sel") -> FakeDNS:
    dns = FakeDNS()
    for d in domains:
        dns.publish(selector, d, keypair(d)[1])
    return dns
