"""Certificates for the TLS tests: a CA, server and client certificates it signs, an encrypted key.

Made with the ``cryptography`` package when it is installed, else with the
``openssl`` command (Debian's openssl package); ``Certs(directory)`` skips the
calling test, saying why, when neither is there.  Keys are P-256 (fast to
make); certificates are valid for a day and carry the extensions a strict
verifier asks for (basic constraints, key usage, key identifiers).  A server
certificate names ``localhost`` and ``127.0.0.1``.
"""

import datetime
import os
import shutil
import subprocess

import pytest

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError:
    x509 = None


class Certs:
    """A test CA in ``directory``; ``server``/``client`` make certificates it signs."""

    def __init__(self, directory):
        self.directory = str(directory)
        if x509 is not None:
            self._maker = _Cryptography(self.directory)
        elif shutil.which("openssl"):
            self._maker = _OpenSSL(self.directory)
        else:
            pytest.skip("making test certificates needs the cryptography package or the openssl "
                        "command (apt-get install openssl)")
        self.ca = self._maker.ca()

    def server(self, name, serial, password=None):
        """``(certificate path, key path)`` for localhost and 127.0.0.1, serial ``serial``;
        the key encrypted with ``password`` if given."""
        return self._maker.leaf(name, serial, server=True, password=password)

    def client(self, name, serial):
        """``(certificate path, key path)`` of a client certificate."""
        return self._maker.leaf(name, serial, server=False)


class _OpenSSL:
    def __init__(self, directory):
        self.directory = directory

    def _path(self, name):
        return os.path.join(self.directory, name)

    def _run(self, *args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

    def _key(self, path):
        self._run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-out", path)

    def ca(self):
        key, cert = self._path("ca.key"), self._path("ca.pem")
        self._key(key)
        self._run("req", "-x509", "-new", "-key", key, "-out", cert, "-days", "1",
                  "-subj", "/CN=fastfork test CA", "-set_serial", "1",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                  "-addext", "subjectKeyIdentifier=hash")
        self.ca_key, self.ca_cert = key, cert
        return cert

    def leaf(self, name, serial, server, password=None):
        key, cert, csr = (self._path(f"{name}.key"), self._path(f"{name}.pem"),
                          self._path(f"{name}.csr"))
        extensions = self._path(f"{name}.ext")
        self._key(key)
        self._run("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={name}")
        with open(extensions, "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature\n"
                    f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}\n"
                    "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
                    + ("subjectAltName=DNS:localhost,IP:127.0.0.1\n" if server else ""))
        self._run("x509", "-req", "-in", csr, "-CA", self.ca_cert, "-CAkey", self.ca_key,
                  "-set_serial", str(serial), "-days", "1", "-out", cert,
                  "-extfile", extensions)
        if password is not None:
            encrypted = self._path(f"{name}.enc.key")
            self._run("pkey", "-in", key, "-aes256", "-passout", f"pass:{password}",
                      "-out", encrypted)
            key = encrypted
        return cert, key


class _Cryptography:
    def __init__(self, directory):
        self.directory = directory

    def _write(self, name, data):
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def _key_pem(self, key, password=None):
        encryption = (serialization.BestAvailableEncryption(password.encode()) if password
                      else serialization.NoEncryption())
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8, encryption)

    def _builder(self, subject, issuer, public_key, serial):
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                .public_key(public_key).serial_number(serial)
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                               critical=False))

    def ca(self):
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.KeyUsage(digital_signature=False, content_commitment=False,
                              key_encipherment=False, data_encipherment=False,
                              key_agreement=False, key_cert_sign=True, crl_sign=True,
                              encipher_only=False, decipher_only=False)
        self.ca_cert = (self._builder("fastfork test CA", "fastfork test CA",
                                      self.ca_key.public_key(), 1)
                        .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                       critical=True)
                        .add_extension(usage, critical=True)
                        .sign(self.ca_key, hashes.SHA256()))
        self._write("ca.key", self._key_pem(self.ca_key))
        return self._write("ca.pem", self.ca_cert.public_bytes(serialization.Encoding.PEM))

    def leaf(self, name, serial, server, password=None):
        import ipaddress

        key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.KeyUsage(digital_signature=True, content_commitment=False,
                              key_encipherment=False, data_encipherment=False,
                              key_agreement=False, key_cert_sign=False, crl_sign=False,
                              encipher_only=False, decipher_only=False)
        purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (self._builder(name, "fastfork test CA", key.public_key(), serial)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(usage, critical=True)
                   .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.ca_key.public_key()), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        cert = builder.sign(self.ca_key, hashes.SHA256())
        cert_path = self._write(f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
        key_name = f"{name}.enc.key" if password is not None else f"{name}.key"
        return cert_path, self._write(key_name, self._key_pem(key, password))
