"""Prefect Blocks for where each outside system is and its secrets.

`get_client()`-style methods are the only place a client is built (and the test seam). Secrets
are SecretStr: Prefect shows them as ******** and they never reach logs, parameters, results or
artifacts. Production fills these in the UI or with `Block.save`; `lab up` saves a set that points
at the lab (lab.blocks).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import quote

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from phasegate.constants import VLLM_URLS_ENV
from phasegate.policy.containers import DEFAULT_HOST_PORT

# The clients are imported where a client is built, not here: every flow and the CLI import
# this module, and google.cloud.compute_v1 alone took 3.2 s of a 9 s `triggers check`.
# The Blocks' fields are plain types, so Block registration and save/load are unaffected.
if TYPE_CHECKING:
    import paramiko
    import psycopg
    import redis
    from google.auth.credentials import Credentials
    from google.cloud import compute_v1, run_v2
    from prometheus_api_client import PrometheusConnect

__all__ = ["GcpConnection", "GpuHost", "HttpEndpoint", "PostgresConnection",
           "PrometheusConnection", "RedisConnection", "ReportStore", "load_block"]


class PostgresConnection(Block):
    """A PostgreSQL server with the app database and phasegate's state database."""

    _block_type_name = "phasegate PostgreSQL"
    host: str = Field(description="Server host name or address.")
    port: int = Field(default=5432, description="Server port.")
    user: str = Field(description="Login role.")
    password: SecretStr | None = Field(default=None, description="Password (none for trust).")
    app_database: str = Field(default="dreamseed", description="The service's database.")
    state_database: str = Field(default="phasegate", description="phasegate's state and audit.")
    sslmode: str = Field(default="prefer", description="libpq sslmode.")
    connect_timeout_s: int = Field(default=10, description="libpq connect_timeout.")

    def conninfo(self, database: str) -> str:
        """A libpq URI for `database` (contains the password: never log it)."""
        secret = f":{quote(self.password.get_secret_value(), safe='')}" if self.password else ""
        return (f"postgresql://{quote(self.user, safe='')}{secret}@{self.host}:{self.port}/"
                f"{database}?sslmode={self.sslmode}&connect_timeout={self.connect_timeout_s}"
                f"&{KEEPALIVES}")

    def get_connection(self, database: str | None = None) -> psycopg.Connection[Any]:
        """Open a connection to `database` (default: the app database). TCP keepalives are
        on: a peer gone silently (a failover, a cut link) ends the session within ~1 min
        instead of the kernel's two hours, so a lost transition lock is noticed."""
        import psycopg

        return psycopg.connect(self.conninfo(database or self.app_database))


# libpq's keepalive parameters (in the URI, so pg_dump and psql get them too): first
# probe after 30 s idle, then every 10 s, 3 misses.
KEEPALIVES = "keepalives=1&keepalives_idle=30&keepalives_interval=10&keepalives_count=3"


class RedisConnection(Block):
    """The Redis server behind the API's cache."""

    _block_type_name = "phasegate Redis"
    host: str = Field(description="Server host.")
    port: int = Field(default=6379, description="Server port.")
    db: int = Field(default=0, description="Database index.")
    password: SecretStr | None = Field(default=None, description="AUTH password.")
    timeout_s: float = Field(default=5.0, description="Socket timeout.")

    def get_client(self) -> redis.Redis:
        """A redis-py client that decodes responses to str."""
        import redis

        pw = self.password.get_secret_value() if self.password else None
        return redis.Redis(host=self.host, port=self.port, db=self.db, password=pw,
                           socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s,
                           decode_responses=True)


class PrometheusConnection(Block):
    """The Prometheus server that scrapes the service, vLLM and the GPU hosts."""

    _block_type_name = "phasegate Prometheus"
    url: str = Field(description="Base URL, e.g. http://prometheus:9090")
    bearer_token: SecretStr | None = Field(default=None, description="Bearer token, if any.")
    timeout_s: float = Field(default=10.0, description="Per-query timeout.")

    def headers(self) -> dict[str, str]:
        """Request headers: the bearer token, if any."""
        return ({"Authorization": f"Bearer {self.bearer_token.get_secret_value()}"}
                if self.bearer_token else {})

    def get_client(self) -> PrometheusConnect:
        """A prometheus-api-client connection (no retries: callers decide). An https URL is
        verified against the system CA store (prometheus-api-client's `disable_ssl` turns
        verification off, never what a production server should get)."""
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry

        # retry=0: prometheus-api-client retries 3 times with backoff by default, which would
        # hide an outage for seconds; callers turn a failure into an Error measurement.
        return PrometheusConnect(url=self.url, headers=self.headers() or None,
                                 disable_ssl=False, retry=Retry(total=0),
                                 timeout=self.timeout_s)


class HttpEndpoint(Block):
    """An HTTP service phasegate load-tests and watches (the API on Cloud Run)."""

    _block_type_name = "phasegate HTTP endpoint"
    url: str = Field(description="Base URL, e.g. https://api.example.com")
    bearer_token: SecretStr | None = Field(default=None, description="Bearer token, if any.")
    health_path: str = Field(default="/health",
                             description="Path that answers 200 when the service is up.")


class GpuHost(Block):
    """One GPU server reached over SSH (host keys always verified: RejectPolicy)."""

    _block_type_name = "phasegate GPU host"
    name: str = Field(description="The plan's host name, e.g. gpu-1.")
    host: str = Field(description="Address to connect to.")
    port: int = Field(default=22, description="SSH port.")
    user: str = Field(description="Login user.")
    private_key: SecretStr = Field(description="OpenSSH private key (ed25519 or RSA), PEM text.")
    known_hosts: str = Field(description="known_hosts lines for this host (public, not secret).")
    vllm_port: int = Field(default=DEFAULT_HOST_PORT,
                           description="Host port vLLM is published on (replica k: + k).")
    models_dir: str = Field(default="/models", description="Model directory on the host.")
    connect_timeout_s: float = Field(default=10.0, description="TCP + auth timeout.")

    @property
    def vllm_url(self) -> str:
        """The vLLM server on this host."""
        return f"http://{self.host}:{self.vllm_port}"

    def host_keys(self) -> paramiko.HostKeys:
        """The keys of the Block's known_hosts lines."""
        import paramiko

        keys = paramiko.HostKeys()
        for line in self.known_hosts.splitlines():
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
            if entry is not None and entry.key is not None:
                for hostname in entry.hostnames:
                    keys.add(hostname, entry.key.get_name(), entry.key)
        return keys

    def has_host_key(self) -> bool:
        """Whether known_hosts holds a key for this host and port."""
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return self.host_keys().lookup(name) is not None

    def get_client(self) -> paramiko.SSHClient:
        """A connected SSHClient; raises paramiko.BadHostKeyException / SSHException when the
        host key is wrong or unknown."""
        import paramiko

        client = paramiko.SSHClient()
        for hostname, keys in self.host_keys().items():
            for keytype, key in keys.items():
                client.get_host_keys().add(hostname, keytype, key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(hostname=self.host, port=self.port, username=self.user,
                       pkey=_load_key(self.private_key.get_secret_value()),
                       look_for_keys=False, allow_agent=False, timeout=self.connect_timeout_s,
                       banner_timeout=self.connect_timeout_s, auth_timeout=self.connect_timeout_s)
        return client


def _load_key(text: str) -> paramiko.PKey:
    import paramiko

    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except paramiko.SSHException:
            continue
    raise ValueError("private_key is not an ed25519, ECDSA or RSA OpenSSH key")


class GcpConnection(Block):
    """Google Cloud project hosting the API on Cloud Run (and spot GPUs on Compute)."""

    _block_type_name = "phasegate Google Cloud"
    project: str = Field(description="Project id.")
    region: str = Field(default="asia-northeast3", description="Cloud Run region.")
    zone: str = Field(default="asia-northeast3-a", description="Compute zone.")
    cloud_run_service: str = Field(description="Service id, e.g. dreamseed-api.")
    api_endpoint: str | None = Field(default=None, description="Override (the lab's emulator).")
    vllm_urls_env: str = Field(
        default=VLLM_URLS_ENV,
        description="Env var of the API container listing the vLLM base URLs (comma-separated);"
                    " a transition routes traffic with it. Empty: the API finds vLLM otherwise.")
    service_account_info: SecretStr | None = Field(
        default=None, description="Service-account JSON; empty = application default creds.")

    @property
    def service_name(self) -> str:
        """The Cloud Run service's full resource name."""
        return (f"projects/{self.project}/locations/{self.region}/services/"
                f"{self.cloud_run_service}")

    def _options(self) -> dict[str, Any]:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials

        if self.api_endpoint:  # the lab: plain HTTP, REST transport, no Google credentials
            return {"credentials": AnonymousCredentials(), "transport": "rest",
                    "client_options": ClientOptions(api_endpoint=self.api_endpoint)}
        return {"credentials": self._credentials(), "transport": "rest"}

    def _credentials(self) -> Credentials | None:
        if self.service_account_info is None:
            return None
        import json

        from google.oauth2 import service_account

        info = json.loads(self.service_account_info.get_secret_value())
        return service_account.Credentials.from_service_account_info(info)

    def get_run_client(self) -> run_v2.ServicesClient:
        """Cloud Run v2 services client."""
        from google.cloud import run_v2

        return run_v2.ServicesClient(**self._options())

    def get_instances_client(self) -> compute_v1.InstancesClient:
        """Compute v1 instances client."""
        from google.cloud import compute_v1

        return compute_v1.InstancesClient(**self._options())

    def get_zone_operations_client(self) -> compute_v1.ZoneOperationsClient:
        """Compute zone operations client: wait on operations with it, never with
        ExtendedOperation.result() (that polls Google whatever the endpoint)."""
        from google.cloud import compute_v1

        return compute_v1.ZoneOperationsClient(**self._options())


class ReportStore(Block):
    """Where a transition writes its reports and database dumps, on the machine it runs on
    (a worker). Never under the code's checkout: size `backups_dir` for `pg_dump -Fc` of the
    app database, and keep it off the database server's disk."""

    _block_type_name = "phasegate report store"
    reports_dir: str = Field(description="Postmortems and incident reports (markdown).")
    backups_dir: str = Field(description="Database dumps taken before each transition.")


B = TypeVar("B", bound=Block)


def load_block(cls: type[B], name: str) -> B:
    """`cls.load(name)` with its real type (Prefect types `load` as sync-or-coroutine)."""
    return cast(B, cls.load(name))
