"""Test PKI made with the ``openssl`` command line, and TLS settings for a test Mosquitto.

``make_pki(d)`` writes into ``d``: a venue CA (``ca.crt``/``ca.key``), a broker certificate
for 127.0.0.1 and localhost signed by it (``broker.crt``/``broker.key``), a client
certificate (``gw-a.crt``/``gw-a.key``, common name ``client_cn``), and a rogue CA
(``rogue-ca.crt``) with a client certificate of the same name signed by it
(``rogue.crt``/``rogue.key``). Keys are mode 0600. Certificates are valid for two days.

``make_cert(d, name, days=...)`` adds a certificate signed by that CA with the validity the
test asks for, e.g. a broker certificate that expired yesterday.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

__all__ = ["have_openssl", "make_cert", "make_pki", "openssl", "tls_context",
           "tls_listener_conf"]

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def have_openssl() -> None:
    """Fail the calling test when the ``openssl`` command line is missing (`make test`
    installs it: a skip would hide a missing part)."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command line is not installed (make test installs it)",
                    pytrace=False)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path, client_cn: str = "gw-a") -> None:
    """A venue CA, a broker certificate for 127.0.0.1 and a client certificate (and a rogue
    CA with a client certificate of the same name)."""
    openssl("req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=test venue CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    for name, cn, ext in (
            ("broker", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                    "extendedKeyUsage=serverAuth\n"),
            ("gw-a", client_cn, "extendedKeyUsage=clientAuth\n"),
            ("rogue", client_cn, "extendedKeyUsage=clientAuth\n")):
        (d / f"{name}.ext").write_text(ext)
        openssl("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={cn}", cwd=d)
        ca = "rogue-ca" if name == "rogue" else "ca"
        if name == "rogue":
            openssl("req", "-x509", *_EC, "-keyout", "rogue-ca.key", "-out", "rogue-ca.crt",
                    "-days", "2", "-subj", "/CN=rogue CA", "-addext",
                    "basicConstraints=critical,CA:TRUE", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey",
                f"{ca}.key", "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                "-extfile", f"{name}.ext", cwd=d)
    for key in d.glob("*.key"):
        key.chmod(0o600)


def tls_context(d: Path, ca: str = "ca.crt", cert: str | None = None) -> ssl.SSLContext:
    """A client context trusting ``d/ca`` (with the client certificate ``d/cert.crt``)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(d / ca))
    if cert is not None:
        ctx.load_cert_chain(str(d / f"{cert}.crt"), str(d / f"{cert}.key"))
    return ctx


def make_cert(d: Path, name: str, *, not_before_days: float, not_after_days: float,
              server: bool = True) -> None:
    """Write ``d/name.crt`` and ``d/name.key``: a certificate signed by ``make_pki``'s CA,
    valid from ``not_before_days`` to ``not_after_days`` days from now (negative: in the
    past), for 127.0.0.1 and localhost (``server``) or a client named ``name``."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cn = "localhost" if server else name
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(ca_cert.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now + dt.timedelta(days=not_before_days))
         .not_valid_after(now + dt.timedelta(days=not_after_days)))
    if server:
        import ipaddress

        b = b.add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
    b = b.add_extension(x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
        critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    (d / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (d / f"{name}.key").chmod(0o600)


def tls_listener_conf(d: Path, *, require_certificate: bool = False,
                      cert: str = "broker") -> list[str]:
    """mosquitto.conf lines that make the listener above them TLS with ``make_pki``'s
    broker certificate, or ``d/cert.crt`` (``start_mosquitto(extra_conf=...)``: its one
    listener)."""
    return [f"cafile {d / 'ca.crt'}", f"certfile {d / f'{cert}.crt'}",
            f"keyfile {d / f'{cert}.key'}",
            f"require_certificate {'true' if require_certificate else 'false'}"]
