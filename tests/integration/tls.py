"""A private CA for the tests' HTTPS servers, as a self-hosted GitLab would have one (openssl)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_ca(folder: Path, name: str, ip: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A CA, and a certificate for `ip` signed by it: (CA certificate, certificate, key)."""
    ca_key, ca_cert = folder / f"{name}-ca.key", folder / f"{name}-ca.pem"
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_cert),
        "-days", "2", "-subj", f"/CN={name} test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={ip}")
    (folder / f"{name}-san.ext").write_text(f"subjectAltName=IP:{ip}\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(folder / f"{name}-san.ext"))  # fmt: skip
    return ca_cert, cert, key
