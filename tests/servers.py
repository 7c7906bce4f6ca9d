"""Real servers the tests start themselves, each in its own temp directory on 127.0.0.1.

Dovecot (Debian's dovecot-imapd) with a passwd-file user and a Maildir;
`make test` installs the package when missing. A test that needs a server
the machine lacks fails with the command that installs it, never skips
silently.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Dovecot:
    """A throwaway Dovecot: `user`/`password`, Maildir under `root/home/user/Maildir`."""

    user = "support"
    password = "s3cret-test"

    def __init__(self, root: Path | None = None, tls: bool = False) -> None:
        if not os.path.exists(DOVECOT):
            raise RuntimeError("dovecot is not installed: run 'make test' (apt-get install dovecot-imapd)")
        # Dovecot refuses to run mail processes as root: as root, mail belongs to 'nobody', and the
        # directory must be reachable by it (pytest's tmp_path under root is not).
        self.root = root or Path(tempfile.mkdtemp(prefix="maild-dovecot-"))
        os.chmod(self.root, 0o755)
        if os.getuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self.uid, self.gid = nobody.pw_uid, nobody.pw_gid
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
        self.port = free_port()
        self.home = self.root / "home" / self.user
        self.maildir = self.home / "Maildir"
        self.conf = self.root / "dovecot.conf"
        self.tls = tls
        self.tls_port = free_port() if tls else 0
        self.ca_file = self.root / "ca.pem"
        self.instance = f"maild-test-{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen | None = None

    def write_config(self) -> None:
        for d in ("run", "state", "home"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.maildir / "new").mkdir(parents=True, exist_ok=True)
        (self.maildir / "cur").mkdir(exist_ok=True)
        (self.maildir / "tmp").mkdir(exist_ok=True)
        (self.root / "passwd").write_text(f"{self.user}:{{PLAIN}}{self.password}::::::\n")
        uid, gid = self.uid, self.gid
        ssl_conf = "ssl = no"
        if self.tls:
            cert, key = self_signed_cert()
            (self.root / "cert.pem").write_bytes(cert)
            (self.root / "key.pem").write_bytes(key)
            self.ca_file.write_bytes(cert)
            ssl_conf = f"ssl = yes\nssl_cert = <{self.root}/cert.pem\nssl_key = <{self.root}/key.pem"
        for path in (self.root / "home").rglob("*"):
            os.chown(path, uid, gid)
        os.chown(self.root / "home", uid, gid)
        self.conf.write_text(f"""
base_dir = {self.root}/run
state_dir = {self.root}/state
instance_name = {self.instance}
log_path = {self.root}/dovecot.log
protocols = imap
listen = 127.0.0.1
{ssl_conf}
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
first_valid_uid = 0
mail_uid = {uid}
mail_gid = {gid}
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={self.root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
""")
        os.chmod(self.root, 0o755)

    def start(self) -> Dovecot:
        if not self.conf.exists():
            self.write_config()
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port)
        except RuntimeError:
            self.stop()
            log = (self.root / "dovecot.log").read_text() if (self.root / "dovecot.log").exists() else ""
            raise RuntimeError(f"dovecot did not start: {log[-2000:]}") from None
        return self

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Its imap processes can outlive the master; a stopped server drops its clients.
        subprocess.run(["pkill", "-KILL", "-f", f"dovecot-{self.instance}/"], check=False)
        self.proc = None

    def deliver(self, raw: bytes, folder: str = "INBOX") -> None:
        """Drop a message straight into the Maildir, as a local delivery agent would."""
        base = self.maildir if folder == "INBOX" else self.maildir / f".{folder}"
        for d in ("new", "cur", "tmp"):
            (base / d).mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}.{uuid.uuid4().hex}.maild-test"
        tmp = base / "tmp" / name
        tmp.write_bytes(raw)
        os.chown(tmp, self.uid, self.gid)
        for d in (base, base / "new", base / "cur", base / "tmp"):
            os.chown(d, self.uid, self.gid)
        tmp.rename(base / "new" / name)

    def client(self):
        from imapclient import IMAPClient

        c = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=10)
        c.login(self.user, self.password)
        return c


def self_signed_cert() -> tuple[bytes, bytes]:
    """A certificate for 127.0.0.1 and localhost, its own CA, valid for a day."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()))


PG_BIN = Path("/usr/lib/postgresql/15/bin")


def pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run 'make test' (apt-get install postgresql)")
    return found[-1].parent


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 in a temp directory, trust auth, user `maild`.

    The server refuses to run as root; as root it runs as the `postgres` system user.
    """

    def __init__(self) -> None:
        self.bin = pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="maild-pg-"))
        os.chmod(self.root, 0o755)
        self.data = self.root / "data"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        if os.getuid() == 0:
            pw = pwd.getpwnam("postgres")
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
        else:
            self.uid, self.gid = os.getuid(), os.getgid()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://maild@127.0.0.1:{self.port}/postgres"

    def _run_as(self):
        uid, gid = self.uid, self.gid
        if os.getuid() != 0:
            return None

        def demote() -> None:
            os.setgid(gid)
            os.setuid(uid)

        return demote

    def start(self) -> Postgres:
        os.chown(self.root, self.uid, self.gid)
        subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "maild", "--auth=trust",
                        "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"], check=True, capture_output=True,
                       preexec_fn=self._run_as(), cwd=self.root)
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = "
                       f"'{self.root}'\nmax_connections = 200\nfsync = on\nshared_buffers = 64MB\n")
        self.log = open(self.root / "postgres.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([str(self.bin / "postgres"), "-D", str(self.data)], stdout=self.log,
                                     stderr=subprocess.STDOUT, preexec_fn=self._run_as(), cwd=self.root)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ok = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                capture_output=True).returncode == 0
            if ok:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not start: {(self.root / 'postgres.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTFIX_RECIPE = Path(__file__).resolve().parent.parent / "contrib" / "postfix"

# The services a small instance needs, none chrooted (Debian's default master.cf chroots them into the
# system queue directory).
_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.example.org
mydomain = example.org
mydestination =
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
# everything not for the support domain goes to the test's capture server, never to DNS
relayhost = [127.0.0.1]:{relay_port}
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
# retry deferred mail within seconds, not minutes
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""


class Postfix:
    """A throwaway Postfix: its own config, queue and data directories, smtpd on 127.0.0.1:`port`.

    Its main.cf is a small instance base, then contrib/postfix/main.cf.example verbatim (the
    recipe the README gives), then `main` overrides; master.cf likewise with `master`.
    Never touches /etc/postfix or the system's queue. Needs root (Postfix's master does).
    """

    def __init__(self, relay_port: int) -> None:
        if not os.path.exists(POSTFIX):
            raise RuntimeError("postfix is not installed: run 'make test' (apt-get install postfix)")
        if os.getuid() != 0:
            raise RuntimeError("a Postfix instance needs root (its master process starts as root)")
        self.root = Path(tempfile.mkdtemp(prefix="maild-postfix-"))
        os.chmod(self.root, 0o755)
        self.etc = self.root / "etc"
        self.port = free_port()
        self.relay_port = relay_port

    def configure(self, main: str = "", master: str = "", transport: str = "") -> Postfix:
        for d in ("etc", "queue", "data"):
            (self.root / d).mkdir(exist_ok=True)
        shutil.chown(self.root / "data", "postfix")
        (self.etc / "main.cf").write_text(
            _MAIN_CF.format(root=self.root, relay_port=self.relay_port)
            + (POSTFIX_RECIPE / "main.cf.example").read_text() + "\n" + main
        )
        (self.etc / "master.cf").write_text(_MASTER_CF.format(port=self.port) + master)
        (self.etc / "transport").write_text(transport)
        self.postconf(f"transport_maps=hash:{self.etc}/transport")
        subprocess.run(["postmap", "-c", str(self.etc), f"hash:{self.etc}/transport"], check=True, timeout=30)
        return self

    def postconf(self, *settings: str) -> None:
        subprocess.run(["postconf", "-c", str(self.etc), "-e", *settings], check=True, timeout=30)

    def start(self) -> Postfix:
        out = subprocess.run([POSTFIX, "-c", str(self.etc), "start"], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"postfix did not start: {out.stderr.strip()} {self.log()[-2000:]}")
        wait_port(self.port)
        return self

    def stop(self) -> None:
        pid_file = self.root / "queue" / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return  # never started
        subprocess.run([POSTFIX, "-c", str(self.etc), "stop"], capture_output=True, timeout=60)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def queue(self) -> list[dict]:
        """`postqueue -j`: one JSON object per queued message."""
        import json

        out = subprocess.run(["postqueue", "-c", str(self.etc), "-j"], capture_output=True, text=True, timeout=30)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def flush(self) -> None:
        subprocess.run(["postqueue", "-c", str(self.etc), "-f"], check=True, capture_output=True, timeout=30)
