"""Cluster-launcher files: every clusters/*.yaml validates against Ray's own schema and keeps the platform rules.

The rules (platform notes, "Cluster launcher"): token authentication on every node (RAY_AUTH_MODE=token and the
token file mounted), a CPU head that is one of the node types, at least one autoscaled GPU worker type, spot /
preemptible capacity shown, the dashboard not opened to the network, and no credentials in the file. On top
(cluster issue: token auth, bucket access, pinned environment, MLflow on the head, driver placement, job path):
RAY_AUTH_MODE=token in the container environment and written on every `ray start`; bucket access for the head and
every worker type from instance profiles (AWS, with the IAM policy documents shipped next to the files and the
head allowed to pass the worker role) or service accounts (GCP); every `pip install` constrained by
clusters/constraints.txt, which pins every direct dependency exactly; an MLflow tracking server started on the
head after `ray start` (backgrounded, 127.0.0.1:5000, SQLite on the head, artifacts on the bucket, served by the
server); the `pointtune_driver` resource on the head and on-demand types only, never on spot/preemptible ones;
placeholders in commands quoted; and launch notes (file comments and clusters/README.md) that show `export
RAY_AUTH_MODE=token`, `pointtune submit ... --wait-for-resources` and no manual `request_resources`. Each rule is
a function returning the list of problems it found, so that the negative tests below can show it fails on a
broken copy. New files under clusters/ are picked up by the glob.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_DIR = REPO / "clusters"
CLUSTER_FILES = sorted([*CLUSTER_DIR.glob("*.yaml"), *CLUSTER_DIR.glob("*.yml")])
SCHEMA_PATH = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"

# Credential-looking text: AWS access key ids, AWS secret / session keys, private keys (PEM blocks or JSON service
# account keys), GCP credential blobs, an inline Ray token.
CREDENTIAL_PATTERNS = {
    "AWS access key id": re.compile(r"AKIA[0-9A-Z]{16}"),
    "AWS secret key": re.compile(r"aws_secret_access_key", re.IGNORECASE),
    "AWS session token": re.compile(r"aws_session_token", re.IGNORECASE),
    "private key field": re.compile(r"private_key", re.IGNORECASE),
    "PEM private key": re.compile(r"BEGIN .*PRIVATE KEY"),
    "GCP credentials": re.compile(r"gcp_credentials", re.IGNORECASE),
    "inline Ray token": re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*\S"),
}
TOKEN_ENV = re.compile(r"(?:^|\s)(?:-e|--env)[ =]RAY_AUTH_MODE=token(?:\s|$)")

README = CLUSTER_DIR / "README.md"
CONSTRAINTS = CLUSTER_DIR / "constraints.txt"
AWS_WORKER_POLICY = CLUSTER_DIR / "aws-iam-worker-policy.json"
AWS_PASSROLE_POLICY = CLUSTER_DIR / "aws-iam-head-passrole-policy.json"
# The custom resource that the trial drivers ask a fraction of: only node types that cannot be preempted have it.
DRIVER_RESOURCE = "pointtune_driver"
# The tracking server on the head (the sweep's default --mlflow-uri on a cluster) and the job API (ray dashboard).
MLFLOW_URI = "http://127.0.0.1:5000"
JOB_API = "http://127.0.0.1:8265"
BUCKET_SCHEME = {"aws": "s3", "gcp": "gs"}

# Command lists of a cluster file; initialization_commands run on the host, the others in the container.
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")
NODE_TYPE_COMMAND_KEYS = ("initialization_commands", "worker_setup_commands")
# A Ray client in a node command (other than `ray start`, which must carry the token itself, and `ray stop`).
RAY_CLIENT = re.compile(r"\bray\s+(?:job|exec|status|submit|list|summary|memory|timeline)\b|\bimport\s+ray\b"
                        r"|(?:^|[\s;&|(])pointtune\s+(?:sweep|submit|resume|train|best)\b")
PIP_INSTALL = re.compile(r"\bpip3?\s+install\b")
CONSTRAINT_OPTION = re.compile(r"(?:^|\s)(?:-c|--constraint)(?:\s+|=)(\S+)")
EXACT_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")
# <bucket>, <account-id>, ...: outside quotes in a shell command they are redirections.
PLACEHOLDER = re.compile(r"<[A-Za-z][\w-]*>")


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def schema() -> dict:
    assert SCHEMA_PATH.is_file(), f"Ray's cluster schema is missing: {SCHEMA_PATH}"
    with open(SCHEMA_PATH) as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------- the rules


def schema_errors(config: object, schema: dict) -> list[str]:
    """Every violation of Ray's cluster schema, as 'path: message'."""
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    ]


def _docker_options(config: dict) -> list[str]:
    docker = config.get("docker") or {}
    options = [*docker.get("run_options", []), *docker.get("head_run_options", []),
               *docker.get("worker_run_options", [])]
    return [str(o) for o in options]


def _ray_start_commands(config: dict, key: str) -> list[str]:
    return [c for c in config.get(key) or [] if re.search(r"\bray start\b", c)]


def auth_problems(config: dict) -> list[str]:
    """Token authentication: RAY_AUTH_MODE=token for every `ray start` and the token file mounted."""
    problems = []
    docker_env = any(TOKEN_ENV.search(o) for o in _docker_options(config)) and bool(
        (config.get("docker") or {}).get("image"))
    for key, kind in (("head_start_ray_commands", "--head"), ("worker_start_ray_commands", "--address")):
        starts = _ray_start_commands(config, key)
        if not any(kind in c for c in starts):
            problems.append(f"{key}: no `ray start {kind}` command")
        for cmd in starts:
            if not (docker_env or "RAY_AUTH_MODE=token" in cmd):
                problems.append(f"{key}: `{cmd}` runs without RAY_AUTH_MODE=token (inline or docker -e)")
    text = json.dumps(config)
    if re.search(r"RAY_AUTH_MODE=(?!token\b)", text):
        problems.append("RAY_AUTH_MODE is set to something other than token")
    mounts = config.get("file_mounts") or {}
    token_mounts = {r: l for r, l in mounts.items() if str(r).rstrip("/").endswith(".ray/auth_token")}
    if not token_mounts:
        problems.append("file_mounts: the Ray auth token (~/.ray/auth_token) is not mounted")
    for remote, local in token_mounts.items():
        if Path(str(local)).expanduser() != Path("~/.ray/auth_token").expanduser():
            problems.append(f"file_mounts: {remote} should come from ~/.ray/auth_token, not {local}")
    return problems


def dashboard_problems(config: dict) -> list[str]:
    """The dashboard (and its job API) is reached through `ray dashboard` (SSH), never on a public interface."""
    problems = []
    for cmd in _ray_start_commands(config, "head_start_ray_commands"):
        host = re.search(r"--dashboard-host[ =](\S+)", cmd)
        if host and host.group(1) not in ("127.0.0.1", "localhost"):
            problems.append(f"head_start_ray_commands: dashboard bound to {host.group(1)}")
    rules = ((config.get("provider") or {}).get("security_group") or {}).get("IpPermissions") or []
    for rule in rules:
        if rule.get("FromPort", 0) <= 8265 <= rule.get("ToPort", -1):
            problems.append("provider.security_group opens the dashboard port 8265")
    return problems


def node_type_problems(config: dict) -> list[str]:
    """A CPU head among the node types, and at least one GPU worker type that can scale up."""
    problems = []
    node_types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    if head not in node_types:
        problems.append(f"head_node_type {head!r} is not one of available_node_types {sorted(node_types)}")
    elif node_types[head].get("resources", {}).get("GPU", 0):
        problems.append(f"head node type {head!r} declares GPUs: the head only runs Tune drivers")
    global_max = config.get("max_workers", 0)
    if not isinstance(global_max, int) or global_max < 1:
        problems.append(f"max_workers is {global_max!r}: no worker can ever start")
        global_max = 0
    workers = {name: nt for name, nt in node_types.items() if name != head}
    gpu_types = [
        name for name, nt in workers.items()
        if nt.get("resources", {}).get("GPU", 0) >= 1 and nt.get("max_workers", 0) >= 1
    ]
    if not gpu_types:
        problems.append("no worker node type with resources.GPU >= 1 and max_workers >= 1")
    for name, nt in workers.items():
        lo, hi = nt.get("min_workers", 0), nt.get("max_workers", 0)
        if lo > hi:
            problems.append(f"{name}: min_workers {lo} > max_workers {hi}")
        if hi > global_max:
            problems.append(f"{name}: max_workers {hi} exceeds the cluster's max_workers {global_max}")
        if "CPU" not in nt.get("resources", {}):
            problems.append(f"{name}: resources should declare CPU (the autoscaler plans with it)")
    if sum(nt.get("min_workers", 0) for nt in workers.values()) > global_max:
        problems.append("the sum of min_workers exceeds max_workers")
    return problems


def docker_problems(config: dict) -> list[str]:
    """A Ray GPU image of the Ray version the project runs, so cluster and client speak the same protocol."""
    docker = config.get("docker") or {}
    image = docker.get("image", "")
    m = re.fullmatch(r"rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)(-py\d+)?-(gpu|cu\d+)", image)
    if not m:
        return [f"docker.image {image!r} is not a rayproject/ray GPU image (rayproject/ray:X.Y.Z-pyNN-gpu)"]
    problems = []
    if m.group(1) != ray.__version__:
        problems.append(f"docker.image has Ray {m.group(1)}, the project runs Ray {ray.__version__}")
    if not docker.get("container_name"):
        problems.append("docker.container_name is missing")
    return problems


def preemptible_problems(config: dict) -> list[str]:
    """Spot (AWS) / preemptible or Spot (GCP) capacity is shown on at least one worker type; GCP GPU VMs are set
    to TERMINATE on host maintenance, with `scheduling` as a mapping (the Compute API object)."""
    provider = (config.get("provider") or {}).get("type")
    node_types = config.get("available_node_types") or {}
    problems = []
    if provider == "aws":
        spot = [n for n, nt in node_types.items()
                if (nt.get("node_config", {}).get("InstanceMarketOptions") or {}).get("MarketType") == "spot"]
        if not spot:
            problems.append("no node type uses InstanceMarketOptions: {MarketType: spot}")
    elif provider == "gcp":
        cheap = []
        for name, nt in node_types.items():
            node_config = nt.get("node_config", {})
            scheduling = node_config.get("scheduling", {})
            if not isinstance(scheduling, dict):
                problems.append(f"{name}: scheduling must be a mapping, not {type(scheduling).__name__}")
                continue
            if scheduling.get("preemptible") is True or scheduling.get("provisioningModel") == "SPOT":
                cheap.append(name)
            if node_config.get("guestAccelerators") and scheduling.get("onHostMaintenance") != "TERMINATE":
                problems.append(f"{name}: GPU VMs need scheduling.onHostMaintenance: TERMINATE")
        if not cheap:
            problems.append("no node type uses scheduling: {preemptible: true} (or provisioningModel: SPOT)")
    else:
        problems.append(f"provider {provider!r}: no spot/preemptible rule known for it (extend this test)")
    return problems


def _commands(config: dict) -> list[tuple[str, str]]:
    """Every node command as (where, command): the top-level lists and those of the node types."""
    out = [(key, str(c)) for key in COMMAND_KEYS for c in config.get(key) or []]
    for name, nt in (config.get("available_node_types") or {}).items():
        out += [(f"{name}.{key}", str(c)) for key in NODE_TYPE_COMMAND_KEYS for c in nt.get(key) or []]
    return out


def _is_preemptible(provider: str | None, node_type: dict) -> bool:
    """Spot (AWS InstanceMarketOptions) or preemptible / Spot (GCP scheduling)."""
    node_config = node_type.get("node_config") or {}
    if provider == "aws":
        return (node_config.get("InstanceMarketOptions") or {}).get("MarketType") == "spot"
    scheduling = node_config.get("scheduling") or {}
    return isinstance(scheduling, dict) and (
        scheduling.get("preemptible") is True or scheduling.get("provisioningModel") == "SPOT")


def token_everywhere_problems(config: dict) -> list[str]:
    """RAY_AUTH_MODE=token in the container environment (docker run_options: head and workers, so `ray exec`,
    `ray attach` and jobs have it) AND written on every `ray start` (head and worker join), so that neither alone
    decides whether the cluster authenticates; any other Ray client in the node commands (ray job/exec/status,
    pointtune, `import ray`) has it inline or, inside the container, from that environment."""
    problems = []
    docker = config.get("docker") or {}
    in_container = bool(docker.get("image"))
    container_env = in_container and any(TOKEN_ENV.search(str(o)) for o in docker.get("run_options") or [])
    if in_container and not container_env:
        problems.append("docker.run_options: no `-e RAY_AUTH_MODE=token` for the processes in the container")
    for where, cmd in _commands(config):
        inline = re.search(r"\bRAY_AUTH_MODE=token\b", cmd)
        on_host = where.endswith("initialization_commands")
        if re.search(r"\bray\s+start\b", cmd) and not inline:
            problems.append(f"{where}: `{cmd}` does not set RAY_AUTH_MODE=token itself")
        elif RAY_CLIENT.search(cmd) and not inline and (on_host or not container_env):
            problems.append(f"{where}: `{cmd}` runs a Ray client without RAY_AUTH_MODE=token")
    return problems


def _instance_profile_name(profile: object) -> str | None:
    """The name in an IamInstanceProfile {Arn: ...} or {Name: ...}; None if missing or malformed."""
    if not isinstance(profile, dict):
        return None
    if "Arn" in profile:
        m = re.fullmatch(r"arn:aws:iam::(?:\d{12}|<account-id>):instance-profile/(?:[\w+=,.@-]+/)*([\w+=,.@-]+)",
                         str(profile["Arn"]))
        return m.group(1) if m else None
    return str(profile["Name"]) if profile.get("Name") else None


def _statements(doc: dict) -> list[dict]:
    statements = doc.get("Statement", [])
    return [statements] if isinstance(statements, dict) else list(statements)


def _as_list(value: object) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _allowed(doc: dict) -> set[tuple[str, str]]:
    """(action, resource) pairs that an IAM policy document allows."""
    return {(action, resource) for s in _statements(doc) if s.get("Effect") == "Allow"
            for action in _as_list(s.get("Action")) for resource in _as_list(s.get("Resource"))}


def passable_roles(doc: dict) -> set[str]:
    """Role names that a policy document allows to be passed (iam:PassRole) to a service."""
    return {m.group(1) for action, resource in _allowed(doc) if action in ("iam:PassRole", "iam:*")
            for m in [re.fullmatch(r"arn:aws:iam::(?:\d{12}|<account-id>):role/(?:[\w+=,.@-]+/)*([\w+=,.@-]+)",
                                   resource)] if m}


def aws_policy_problems(worker: dict, passrole: dict) -> list[str]:
    """The worker policy gives the bucket (list) and its objects (get/put/delete), and no wildcard action or
    resource; the head's policy lets it pass a named role, not every role."""
    problems = []
    allowed = _allowed(worker)
    needed = [("s3:ListBucket", "arn:aws:s3:::<bucket>")] + [
        (f"s3:{a}", "arn:aws:s3:::<bucket>/*") for a in ("GetObject", "PutObject", "DeleteObject")]
    problems += [f"worker policy: {action} on {resource} is not allowed" for action, resource in needed
                 if (action, resource) not in allowed]
    problems += [f"worker policy: {action} on {resource} is broader than the bucket" for action, resource in allowed
                 if "*" in action or resource in ("*", "arn:aws:s3:::*")]
    if not passable_roles(passrole):
        problems.append("head policy: no iam:PassRole on arn:aws:iam::<account-id>:role/<worker role>")
    problems += [f"head policy: {action} on {resource}: pass only the worker role" for action, resource in
                 _allowed(passrole) if action == "iam:PassRole" and resource.endswith(("*", ":role/"))]
    return problems


def bucket_access_problems(config: dict) -> list[str]:
    """Bucket access from the cloud's identities, never keys. AWS: an IamInstanceProfile on the head (its role needs
    iam:PassRole on the worker role) and on every worker type, each worker profile one whose role (same name, as
    clusters/README.md creates it) aws-iam-head-passrole-policy.json lets the head pass. GCP: a service account
    with a storage-capable scope on every worker type (the head gets Ray's ray-autoscaler-sa-v1)."""
    provider = (config.get("provider") or {}).get("type")
    node_types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    workers = {name: nt for name, nt in node_types.items() if name != head}
    problems = []
    if provider == "aws":
        head_config = (node_types.get(head) or {}).get("node_config") or {}
        if _instance_profile_name(head_config.get("IamInstanceProfile")) is None:
            problems.append(f"{head}: no IamInstanceProfile (arn:aws:iam::<account-id>:instance-profile/NAME)")
        passable = passable_roles(json.loads(AWS_PASSROLE_POLICY.read_text())) if AWS_PASSROLE_POLICY.is_file() \
            else set()
        for name, nt in workers.items():
            profile = _instance_profile_name((nt.get("node_config") or {}).get("IamInstanceProfile"))
            if profile is None:
                problems.append(f"{name}: no IamInstanceProfile: its trials cannot write checkpoints to S3")
            elif profile not in passable:
                problems.append(f"{name}: the head may not pass role {profile} ({AWS_PASSROLE_POLICY.name})")
    elif provider == "gcp":
        storage_scopes = {f"https://www.googleapis.com/auth/{s}"
                          for s in ("cloud-platform", "devstorage.read_write", "devstorage.full_control")}
        for name, nt in workers.items():
            accounts = (nt.get("node_config") or {}).get("serviceAccounts") or []
            if not accounts or not all(isinstance(a, dict) and a.get("email") for a in accounts):
                problems.append(f"{name}: no serviceAccounts email: its trials cannot write checkpoints to GCS")
            elif not any(set(a.get("scopes") or []) & storage_scopes for a in accounts):
                problems.append(f"{name}: the service account has no scope that allows writing to GCS")
    else:
        problems.append(f"provider {provider!r}: no bucket-access rule known for it (extend this test)")
    return problems


def _local_path(config: dict, remote: str) -> Path | None:
    """The local file behind a node path, through file_mounts (local paths relative to the repository root)."""
    for mount_remote, mount_local in (config.get("file_mounts") or {}).items():
        root = str(mount_remote).rstrip("/")
        if remote == root or remote.startswith(root + "/"):
            return (REPO / Path(str(mount_local)).expanduser() / remote[len(root):].lstrip("/")).resolve()
    return None


def pinned_install_problems(config: dict) -> list[str]:
    """Every `pip install` on the nodes runs with `-c <constraints file>`, a file synced from this repository;
    and a rayproject image (no torch, no pointtune) does get the project installed."""
    problems = []
    installs = [(where, cmd) for where, cmd in _commands(config) if PIP_INSTALL.search(cmd)]
    image = str((config.get("docker") or {}).get("image", ""))
    if image.startswith("rayproject/") and not any(where == "setup_commands" for where, _ in installs):
        problems.append("setup_commands install nothing, but the rayproject image has neither torch nor pointtune")
    for where, cmd in installs:
        option = CONSTRAINT_OPTION.search(cmd)
        if not option:
            problems.append(f"{where}: `{cmd}` installs without a constraints file (-c ...)")
            continue
        local = _local_path(config, option.group(1).strip("'\""))
        if local is None:
            problems.append(f"{where}: constraints file {option.group(1)} is not under any file_mounts path")
        elif not local.is_file():
            problems.append(f"{where}: constraints file {option.group(1)} is {local}, which does not exist")
    return problems


def _requirement_names(requirements: list[str]) -> list[str]:
    return [re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r.strip()).group(0) for r in requirements]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints_problems(text: str, required: list[str], ray_version: str, torch_version: str | None) -> list[str]:
    """Every line of the constraints file an exact pin; every required package pinned; ray at the Ray the project
    runs (and docker.image has), torch at the Makefile's pin."""
    problems, pins = [], {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = EXACT_PIN.fullmatch(line)
        if not m:
            problems.append(f"line {number}: `{line}` is not an exact pin (name==version)")
            continue
        pins[_normalize(m.group(1))] = m.group(2)
    problems += [f"{name} is not pinned" for name in required if _normalize(name) not in pins]
    if pins.get("ray") != ray_version:
        problems.append(f"ray is pinned to {pins.get('ray')}, the project runs Ray {ray_version}")
    if torch_version and pins.get("torch") != torch_version:
        problems.append(f"torch is pinned to {pins.get('torch')}, the Makefile installs {torch_version}")
    return problems


def mlflow_server_problems(config: dict) -> list[str]:
    """The tracking server on the head, started by head_start_ray_commands after `ray start --head`: backgrounded
    with nohup and logging to /tmp, bound to 127.0.0.1:5000 (reached through SSH like the dashboard), SQLite on the
    head's disk, artifacts on the provider's bucket, served by the server itself."""
    provider = (config.get("provider") or {}).get("type")
    scheme = BUCKET_SCHEME.get(provider, "s3|gs")
    commands = [str(c) for c in config.get("head_start_ray_commands") or []]
    servers = [i for i, c in enumerate(commands) if re.search(r"\bmlflow\s+server\b", c)]
    heads = [i for i, c in enumerate(commands) if re.search(r"\bray\s+start\b", c) and "--head" in c]
    if not servers:
        return ["head_start_ray_commands: no `mlflow server` (the sweep's tracking server on a cluster)"]
    problems = []
    if not heads or servers[0] < heads[0]:
        problems.append("head_start_ray_commands: the MLflow server must start after `ray start --head`")
    cmd = commands[servers[0]]
    checks = {
        "nohup": r"\bnohup\s+mlflow\s+server\b",
        "& (backgrounded)": r"(?<![&>])&(?![&>\d])",
        "--host 127.0.0.1": r"(?:--host|-h)[ =](?:127\.0\.0\.1|localhost)(?:\s|$)",
        "--port 5000": r"(?:--port|-p)[ =]5000(?:\s|$)",
        "--backend-store-uri sqlite:////<absolute path>": r"--backend-store-uri[ =]['\"]?sqlite:////\S+",
        f"--artifacts-destination {scheme}://<bucket>/...": rf"--artifacts-destination[ =]['\"]?(?:{scheme})://",
        "--serve-artifacts": r"--serve-artifacts(?:\s|$)",
        "a log in /tmp": r"(?:^|\s)>\s*/tmp/\S+",
    }
    problems += [f"head_start_ray_commands: the MLflow server lacks {what}" for what, pattern in checks.items()
                 if not re.search(pattern, cmd)]
    if any(re.search(r"\bmlflow\s+server\b", str(c)) for c in config.get("worker_start_ray_commands") or []):
        problems.append("worker_start_ray_commands: the MLflow server belongs on the head only")
    return problems


def driver_placement_problems(config: dict) -> list[str]:
    """The trial drivers' resource (pointtune_driver) on the head and on every on-demand node type, and on no
    spot/preemptible one: a driver must not vanish with a reclaimed node."""
    provider = (config.get("provider") or {}).get("type")
    node_types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    problems = []
    if not (node_types.get(head) or {}).get("resources", {}).get(DRIVER_RESOURCE, 0) >= 1:
        problems.append(f"head node type {head!r} does not declare {DRIVER_RESOURCE}")
    for name, nt in node_types.items():
        declares = (nt.get("resources") or {}).get(DRIVER_RESOURCE, 0) > 0
        preemptible = _is_preemptible(provider, nt)
        if declares and preemptible:
            problems.append(f"{name}: spot/preemptible, yet declares {DRIVER_RESOURCE} (a driver would die with it)")
        elif not declares and not preemptible:
            problems.append(f"{name}: on-demand, but does not declare {DRIVER_RESOURCE}")
    return problems


def placeholder_quoting_problems(config: dict) -> list[str]:
    """Placeholders such as <bucket> in node commands stand inside quotes: bare, the shell reads `<bucket>` as an
    input redirection and the command fails on a missing file instead of on the placeholder."""
    problems = []
    for where, cmd in _commands(config):
        bare = re.sub(r"'[^']*'|\"[^\"]*\"", "", cmd)
        problems += [f"{where}: {m.group(0)} outside quotes" for m in PLACEHOLDER.finditer(bare)]
    return problems


def launch_notes_problems(text: str, provider: str | None) -> list[str]:
    """What the launch notes (a cluster file's comments, or clusters/README.md for provider None) must tell: the
    local `export RAY_AUTH_MODE=token`, the `pointtune submit` job path with the head's MLflow and
    --wait-for-resources, the raw `ray job submit` alternative, the MLflow tunnel, the bucket access documents; and
    no manual `request_resources` step (the sweep makes and clears that request itself)."""
    providers = [provider] if provider else list(BUCKET_SCHEME)
    required = {
        "export RAY_AUTH_MODE=token": "the local `ray job` CLI / `pointtune submit` send no token without it",
        f"pointtune submit --address {JOB_API} -- sweep": "the job path is `pointtune submit`",
        f"--mlflow-uri {MLFLOW_URI}": "the sweep logs to the tracking server on the head",
        "--wait-for-resources": "the sweep requests (and releases) its GPU workers",
        "ray job submit": "the raw `ray job submit` alternative is explained",
        "ray get-auth-token --generate": "the token is generated once",
    }
    if "aws" in providers:
        required.update({AWS_WORKER_POLICY.name: "the worker policy document", "iam:PassRole": "the head's PassRole",
                         AWS_PASSROLE_POLICY.name: "the head's PassRole document"})
    if "gcp" in providers:
        required["roles/storage.objectAdmin"] = "the worker service account's role on the bucket"
    problems = [f"missing `{needle}`: {why}" for needle, why in required.items() if needle not in text]
    for p in providers:
        if not re.search(rf"pointtune submit .*?--storage {BUCKET_SCHEME[p]}://", text, re.DOTALL):
            problems.append(f"no `pointtune submit ... --storage {BUCKET_SCHEME[p]}://...`")
    if not re.search(r"ray attach \S+ -p 5000|ssh -L 5000:127\.0\.0\.1:5000", text):
        problems.append("no SSH tunnel to the MLflow server (`ray attach <file> -p 5000`)")
    if "request_resources" in text:
        problems.append("a manual `request_resources` step: `--wait-for-resources` replaces it")
    return problems


def credential_hits(text: str) -> list[str]:
    """Names of the credential patterns found in the raw file text (comments included)."""
    return [f"{name} (line {text[:m.start()].count(chr(10)) + 1})"
            for name, pattern in CREDENTIAL_PATTERNS.items() for m in pattern.finditer(text)]


# ----------------------------------------------------------------------------------------------- the files


def test_cluster_files_found():
    names = {p.name for p in CLUSTER_FILES}
    assert {"aws.yaml", "gcp.yaml"} <= names, f"clusters/ holds {sorted(names)}"


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=_ids(CLUSTER_FILES))
def test_matches_ray_schema(path, schema):
    config = load(path)
    assert isinstance(config, dict), f"{path.name} is not a mapping"
    assert schema_errors(config, schema) == []


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=_ids(CLUSTER_FILES))
def test_ray_up_offline_checks(path):
    """What `ray up` does to the file before any cloud call: merge the provider defaults, then validate (schema,
    head type among the node types, min/max workers, docker image and container name)."""
    util = pytest.importorskip("ray.autoscaler._private.util")
    prepared = util.prepare_config(load(path))
    util.validate_config(prepared)
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=_ids(CLUSTER_FILES))
@pytest.mark.parametrize("rule", [auth_problems, dashboard_problems, node_type_problems, docker_problems,
                                  preemptible_problems, token_everywhere_problems, bucket_access_problems,
                                  pinned_install_problems, mlflow_server_problems, driver_placement_problems,
                                  placeholder_quoting_problems], ids=lambda f: f.__name__)
def test_platform_rules(path, rule):
    assert rule(load(path)) == []


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=_ids(CLUSTER_FILES))
def test_no_credentials(path):
    assert credential_hits(path.read_text()) == []
    config = load(path)
    assert "gcp_credentials" not in (config.get("provider") or {})
    assert "ssh_private_key" not in (config.get("auth") or {})


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=_ids(CLUSTER_FILES))
def test_checkpoint_storage_documented(path):
    """The launch comments say where checkpoints go: shared object storage, so multi-node trials and resume work."""
    text = path.read_text()
    assert re.search(r"--storage (s3|gs)://", text), "no `--storage s3://...` / `gs://...` in the launch notes"
    assert "ray get-auth-token --generate" in text


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=_ids(CLUSTER_FILES))
def test_launch_notes(path):
    provider = (load(path).get("provider") or {}).get("type")
    assert launch_notes_problems(path.read_text(), provider) == []


def test_readme_documents_the_cluster_workflow():
    text = README.read_text()
    assert launch_notes_problems(text, None) == []
    for needle in (CONSTRAINTS.name, "docker commit", "docker.image", "setup_commands", "ray-autoscaler-v1",
                   "ray-autoscaler-sa-v1", "pointtune_driver"):
        assert needle in text, f"clusters/README.md does not mention {needle}"


def test_constraints_pin_the_project():
    """clusters/constraints.txt pins every direct dependency (and the [dashboard] extra the head installs)."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = _requirement_names(project["dependencies"] + project["optional-dependencies"]["dashboard"])
    torch = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert constraints_problems(CONSTRAINTS.read_text(), required, ray.__version__, torch and torch.group(1)) == []


def test_aws_iam_policy_documents():
    """The policy documents the AWS file names: valid JSON, the worker limited to the bucket, the head allowed to
    pass the role of the workers' instance profile."""
    worker, passrole = json.loads(AWS_WORKER_POLICY.read_text()), json.loads(AWS_PASSROLE_POLICY.read_text())
    assert aws_policy_problems(worker, passrole) == []
    config = load(CLUSTER_DIR / "aws.yaml")
    profiles = {_instance_profile_name((nt.get("node_config") or {}).get("IamInstanceProfile"))
                for name, nt in config["available_node_types"].items() if name != config["head_node_type"]}
    assert profiles <= passable_roles(passrole)


def test_cluster_dir_has_placeholders_not_secrets():
    """Every file under clusters/ (policies, constraints, README, cluster files): no credentials, and account ids
    and buckets only as <placeholders>."""
    for path in sorted(p for p in CLUSTER_DIR.iterdir() if p.is_file()):
        text = path.read_text()
        assert credential_hits(text) == [], path.name
        assert not re.search(r"arn:aws:iam::\d{12}:", text), f"{path.name} names a real AWS account id"


# ----------------------------------------------------------------------------------------------- the checks can fail


@pytest.fixture
def base_config() -> dict:
    return load(CLUSTER_DIR / "aws.yaml")


def _drop_provider(c):
    del c["provider"]


def _many_workers(c):
    c["max_workers"] = "many"


def _unknown_key(c):
    c["head_node"] = {"InstanceType": "m5.large"}  # legacy key, removed from the schema


def _fractional_gpu(c):
    c["available_node_types"]["gpu_1x"]["resources"]["GPU"] = 0.5


def _node_type_typo(c):
    c["available_node_types"]["gpu_1x"]["max_worker"] = 3


@pytest.mark.parametrize("mutate", [_drop_provider, _many_workers, _unknown_key, _fractional_gpu, _node_type_typo],
                         ids=lambda f: f.__name__.lstrip("_"))
def test_schema_rejects_broken_copy(base_config, schema, mutate):
    broken = copy.deepcopy(base_config)
    mutate(broken)
    assert schema_errors(base_config, schema) == []
    assert schema_errors(broken, schema), f"Ray's schema accepted a config with {mutate.__name__}"


def test_auth_rule_rejects_missing_token(base_config):
    broken = copy.deepcopy(base_config)
    broken["docker"]["run_options"] = [o for o in broken["docker"]["run_options"] if "RAY_AUTH_MODE" not in o]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        broken[key] = [c.replace("RAY_AUTH_MODE=token ", "") for c in broken[key]]
    del broken["file_mounts"]["/home/ray/.ray/auth_token"]
    problems = auth_problems(broken)
    assert any("head_start_ray_commands" in p for p in problems)
    assert any("worker_start_ray_commands" in p for p in problems)
    assert any("auth token" in p for p in problems)


def test_auth_rule_accepts_docker_env_alone(base_config):
    only_docker = copy.deepcopy(base_config)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        only_docker[key] = [c.replace("RAY_AUTH_MODE=token ", "") for c in only_docker[key]]
    assert auth_problems(only_docker) == []
    del only_docker["docker"]
    assert auth_problems(only_docker), "without docker, the -e option no longer applies"


def test_node_type_rule_rejects_cpu_only_cluster(base_config):
    broken = copy.deepcopy(base_config)
    for name, nt in broken["available_node_types"].items():
        nt["resources"].pop("GPU", None)
    broken["head_node_type"] = "missing"
    problems = node_type_problems(broken)
    assert any("GPU" in p for p in problems) and any("head_node_type" in p for p in problems)


def test_dashboard_rule_rejects_public_dashboard(base_config):
    broken = copy.deepcopy(base_config)
    broken["head_start_ray_commands"] = [c.replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0")
                                         for c in broken["head_start_ray_commands"]]
    assert dashboard_problems(broken)


def test_spot_rule_rejects_on_demand_only(base_config):
    broken = copy.deepcopy(base_config)
    for nt in broken["available_node_types"].values():
        nt["node_config"].pop("InstanceMarketOptions", None)
    assert preemptible_problems(broken)
    gcp = load(CLUSTER_DIR / "gcp.yaml")
    gcp["available_node_types"]["gpu_1x"]["node_config"]["scheduling"] = [
        {"preemptible": True}, {"onHostMaintenance": "TERMINATE"}]  # list form: not the Compute API's object
    assert any("mapping" in p for p in preemptible_problems(gcp))


def test_docker_rule_rejects_other_ray_version(base_config):
    broken = copy.deepcopy(base_config)
    broken["docker"]["image"] = "rayproject/ray:2.9.3-py311-gpu"
    assert docker_problems(broken)
    broken["docker"]["image"] = f"rayproject/ray:{ray.__version__}-py311-cpu"
    assert docker_problems(broken)


@pytest.mark.parametrize("line", [
    "aws_access_key_id: AKIA" + "ABCDEFGHIJKLMNOP",
    "AWS_SECRET_ACCESS_KEY=abc",
    '"private_key": "x"',
    "-----BEGIN RSA " + "PRIVATE KEY-----",
    "- -e RAY_AUTH_TOKEN=abc123",
], ids=["aws-key-id", "aws-secret", "private-key-field", "pem", "inline-ray-token"])
def test_credential_scan_finds_secrets(base_config, line):
    text = yaml.safe_dump(base_config) + line + "\n"
    assert credential_hits(text)


def test_token_rule_wants_container_env_and_inline_start(base_config):
    no_inline = copy.deepcopy(base_config)
    no_inline["worker_start_ray_commands"] = [c.replace("RAY_AUTH_MODE=token ", "")
                                              for c in no_inline["worker_start_ray_commands"]]
    assert any("worker_start_ray_commands" in p for p in token_everywhere_problems(no_inline))
    no_env = copy.deepcopy(base_config)
    no_env["docker"]["run_options"] = [o for o in no_env["docker"]["run_options"] if "RAY_AUTH_MODE" not in o]
    assert any("docker.run_options" in p for p in token_everywhere_problems(no_env))
    client_on_host = copy.deepcopy(base_config)
    client_on_host["initialization_commands"] = ["ray job list --address http://127.0.0.1:8265"]
    assert any("initialization_commands" in p for p in token_everywhere_problems(client_on_host))


def test_bucket_access_rule_rejects_missing_identities(base_config):
    broken = copy.deepcopy(base_config)
    del broken["available_node_types"]["gpu_1x"]["node_config"]["IamInstanceProfile"]
    del broken["available_node_types"]["head_cpu"]["node_config"]["IamInstanceProfile"]
    problems = bucket_access_problems(broken)
    assert any(p.startswith("gpu_1x") for p in problems) and any(p.startswith("head_cpu") for p in problems)
    other_role = copy.deepcopy(base_config)
    other_role["available_node_types"]["gpu_4x"]["node_config"]["IamInstanceProfile"] = {
        "Arn": "arn:aws:iam::<account-id>:instance-profile/some-other-role"}
    assert any("may not pass" in p for p in bucket_access_problems(other_role))
    gcp = load(CLUSTER_DIR / "gcp.yaml")
    del gcp["available_node_types"]["gpu_4x"]["node_config"]["serviceAccounts"]
    assert any(p.startswith("gpu_4x") for p in bucket_access_problems(gcp))


def test_policy_rule_rejects_broad_or_missing_grants():
    worker, passrole = json.loads(AWS_WORKER_POLICY.read_text()), json.loads(AWS_PASSROLE_POLICY.read_text())
    no_delete = copy.deepcopy(worker)
    for s in _statements(no_delete):
        s["Action"] = [a for a in _as_list(s["Action"]) if a != "s3:DeleteObject"]
    assert any("DeleteObject" in p for p in aws_policy_problems(no_delete, passrole))
    everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    assert aws_policy_problems(everything, passrole)
    any_role = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*"}]}
    assert any("head policy" in p for p in aws_policy_problems(worker, any_role))


def test_pinned_install_rule_rejects_unconstrained_pip(base_config):
    broken = copy.deepcopy(base_config)
    broken["setup_commands"] = ['pip install -q "torch==2.13.0"', "pip install -q -e /home/ray/pointtune"]
    assert len(pinned_install_problems(broken)) == 2
    missing = copy.deepcopy(base_config)
    missing["setup_commands"] = ["pip install -c /home/ray/pointtune/clusters/no-such-file.txt -e /home/ray/pointtune"]
    assert any("does not exist" in p for p in pinned_install_problems(missing))
    nothing = copy.deepcopy(base_config)
    nothing["setup_commands"] = []
    assert pinned_install_problems(nothing), "a rayproject image without setup_commands has no torch"


def test_constraints_rule_rejects_loose_or_missing_pins():
    text = "torch==2.13.0\nray>=2.50\nmlflow==3.17.2\n"
    problems = constraints_problems(text, ["torch", "ray", "optuna", "mlflow"], "2.60.0", "2.13.0")
    assert any("not an exact pin" in p for p in problems)
    assert any("optuna is not pinned" in p for p in problems)
    assert any("ray is pinned to None" in p for p in problems)
    assert constraints_problems("torch==2.12.0\nray==2.60.0\n", ["torch"], "2.60.0", "2.13.0")


def test_mlflow_rule_rejects_exposed_or_misplaced_server(base_config):
    def server(c):
        return next(i for i, cmd in enumerate(c["head_start_ray_commands"]) if "mlflow server" in cmd)

    public = copy.deepcopy(base_config)
    i = server(public)
    public["head_start_ray_commands"][i] = public["head_start_ray_commands"][i].replace("--host 127.0.0.1",
                                                                                        "--host 0.0.0.0")
    assert any("127.0.0.1" in p for p in mlflow_server_problems(public))
    before_ray = copy.deepcopy(base_config)
    before_ray["head_start_ray_commands"].insert(0, before_ray["head_start_ray_commands"].pop(server(before_ray)))
    assert any("after `ray start" in p for p in mlflow_server_problems(before_ray))
    foreground = copy.deepcopy(base_config)
    i = server(foreground)
    foreground["head_start_ray_commands"][i] = foreground["head_start_ray_commands"][i].replace(
        " & }", " ; }").replace("--serve-artifacts", "")
    problems = mlflow_server_problems(foreground)
    assert any("backgrounded" in p for p in problems) and any("--serve-artifacts" in p for p in problems)
    wrong_bucket = copy.deepcopy(base_config)
    i = server(wrong_bucket)
    wrong_bucket["head_start_ray_commands"][i] = wrong_bucket["head_start_ray_commands"][i].replace("s3://", "gs://")
    assert any("artifacts-destination" in p for p in mlflow_server_problems(wrong_bucket))
    none = copy.deepcopy(base_config)
    none["head_start_ray_commands"] = none["head_start_ray_commands"][:2]
    assert mlflow_server_problems(none)


def test_driver_rule_keeps_drivers_off_spot_nodes(base_config):
    on_spot = copy.deepcopy(base_config)
    on_spot["available_node_types"]["gpu_1x"]["resources"][DRIVER_RESOURCE] = 1000
    assert any(p.startswith("gpu_1x") for p in driver_placement_problems(on_spot))
    no_head = copy.deepcopy(base_config)
    del no_head["available_node_types"]["head_cpu"]["resources"][DRIVER_RESOURCE]
    assert any("head node type" in p for p in driver_placement_problems(no_head))
    gcp = load(CLUSTER_DIR / "gcp.yaml")
    gcp["available_node_types"]["gpu_4x"]["node_config"]["scheduling"]["preemptible"] = True
    assert any(p.startswith("gpu_4x") for p in driver_placement_problems(gcp))


def test_placeholder_rule_rejects_bare_placeholder(base_config):
    broken = copy.deepcopy(base_config)
    broken["head_start_ray_commands"] = [c.replace('"s3://<bucket>/mlflow"', "s3://<bucket>/mlflow")
                                         for c in broken["head_start_ray_commands"]]
    assert any("<bucket>" in p for p in placeholder_quoting_problems(broken))


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("export RAY_AUTH_MODE=token", "RAY_AUTH_MODE=token"),
    lambda t: t.replace("--wait-for-resources 900", "") + "\n# rr = request_resources(bundles=[{'GPU': 1}])\n",
    lambda t: t.replace("pointtune submit", "ray job submit"),
    lambda t: t.replace("-p 5000", ""),
], ids=["no-export", "manual-request", "no-submit", "no-mlflow-tunnel"])
def test_launch_notes_rule_rejects_stale_notes(edit):
    text = (CLUSTER_DIR / "aws.yaml").read_text()
    assert launch_notes_problems(text, "aws") == []
    assert launch_notes_problems(edit(text), "aws")
