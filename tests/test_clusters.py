"""Cluster-launcher files: every clusters/*.yaml validates against Ray's own schema and keeps the platform rules.

The rules (platform notes, "Cluster launcher"): token authentication on every node (RAY_AUTH_MODE=token and the
token file mounted), a CPU head that is one of the node types, at least one autoscaled GPU worker type, spot /
preemptible capacity shown, the dashboard not opened to the network, and no credentials in the file. Each rule is
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
                                  preemptible_problems], ids=lambda f: f.__name__)
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

