"""A real registry for tests: Debian's docker-registry (the CNCF distribution registry) on loopback, with TLS
from a CA made here and htpasswd basic auth."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

USER = "imgbuild"
PASSWORD = "disc-to-site"


@dataclass
class LocalRegistry:
    host: str  # 127.0.0.1:PORT
    ca: Path
    auth_file: Path  # a containers auth.json / docker config.json holding USER and PASSWORD
    folder: Path
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(list(args), cwd=cwd, check=True, capture_output=True)


def make_ca_and_cert(folder: Path, name: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """(ca.crt, server.crt, server.key): a CA and a certificate for ``name`` signed by it (openssl)."""
    folder.mkdir(parents=True, exist_ok=True)
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=imgbuild test CA",
         "-keyout", "ca.key", "-out", "ca.crt", cwd=folder)
    _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", "server.key",
         "-out", "server.csr", cwd=folder)
    (folder / "san.cnf").write_text(f"subjectAltName=IP:{name}\n")
    _run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
         "-days", "2", "-extfile", "san.cnf", "-out", "server.crt", cwd=folder)
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


def auth_file(path: Path, host: str, user: str, password: str) -> Path:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path


def start_registry(folder: Path) -> LocalRegistry:
    binary = shutil.which("docker-registry")
    if binary is None:
        raise RuntimeError("docker-registry is not installed (apt-get install docker-registry; scripts/setup.sh)")
    ca, cert, key = make_ca_and_cert(folder / "tls")
    hashed = subprocess.run(["htpasswd", "-nbB", USER, PASSWORD], check=True, capture_output=True, text=True)
    (folder / "htpasswd").write_text(hashed.stdout)
    port = _free_port()
    host = f"127.0.0.1:{port}"
    (folder / "config.yml").write_text(f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {folder / 'data'}
  delete:
    enabled: true
http:
  addr: {host}
  tls:
    certificate: {cert}
    key: {key}
auth:
  htpasswd:
    realm: imgbuild-test
    path: {folder / 'htpasswd'}
""")
    log = open(folder / "registry.log", "wb")
    process = subprocess.Popen([binary, "serve", str(folder / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            answer = requests.get(f"https://{host}/v2/", verify=str(ca), timeout=2)
            if answer.status_code == 401:
                break
        except requests.RequestException:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("docker-registry did not start: " + (folder / "registry.log").read_text()[-2000:])
        time.sleep(0.2)
    return LocalRegistry(host, ca, auth_file(folder / "auth.json", host, USER, PASSWORD), folder, process)
