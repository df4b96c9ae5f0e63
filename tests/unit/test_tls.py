"""HTTPS for the API and the pages (a browser gives a page the microphone only over https or on localhost)."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from orchestrator.app import tls_context
from orchestrator.config import ApiSettings, Settings, validate
from orchestrator.errors import BadOption


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "duet.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def test_a_certificate_and_key_serve_https(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    context = tls_context(Settings(api=ApiSettings(tls_cert_file=str(cert), tls_key_file=str(key))))
    assert isinstance(context, ssl.SSLContext)
    assert tls_context(Settings()) is None  # plain http by default


def test_a_half_or_broken_tls_setting_is_refused(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    with pytest.raises(BadOption, match="together"):
        validate(Settings(api=ApiSettings(tls_cert_file=str(cert))))
    with pytest.raises(BadOption, match="cannot be used"):
        tls_context(Settings(api=ApiSettings(tls_cert_file=str(cert), tls_key_file=str(cert))))
