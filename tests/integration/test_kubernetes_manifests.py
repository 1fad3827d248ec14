"""packaging/kubernetes/ (SPEC §13): every manifest is validated offline against the
Kubernetes API schema of npm's kubernetes-models (installed at test time into the test cache,
nothing vendored), the sidecar contract is checked, and the ConfigMap's configuration passes
`mailcar --check`."""
import copy
import json
import re
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, "/usr/lib/python3/dist-packages")
import yaml  # noqa: E402

from conftest import MAILCAR_BIN, SOURCE_DIR  # noqa: E402
from mailcar_cache import cache_dir  # noqa: E402

MODELS_VERSION = "5.1.0"
MANIFESTS = SOURCE_DIR / "packaging" / "kubernetes"
VALIDATOR = SOURCE_DIR / "tests" / "integration" / "k8s_validate.mjs"


@pytest.fixture(scope="module")
def node_modules():
    if not shutil.which("npm") or not shutil.which("node"):
        pytest.skip("npm and node are not installed")
    prefix = cache_dir("npm-kubernetes-models")
    installed = prefix / "node_modules" / "kubernetes-models" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != MODELS_VERSION:
        subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                        "--silent", f"kubernetes-models@{MODELS_VERSION}"],
                       check=True, capture_output=True, timeout=300)
    return prefix / "node_modules"


def load_all():
    objects = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                objects.append({"source": path.name, "object": doc})
    return objects


def validate(node_modules, objects, tmp_path):
    listing = tmp_path / "objects.json"
    listing.write_text(json.dumps(objects))
    proc = subprocess.run(["node", str(VALIDATOR), str(node_modules), str(listing)],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout.splitlines() + proc.stderr.splitlines()


def find(objects, kind, name):
    for o in objects:
        if o["object"]["kind"] == kind and o["object"]["metadata"]["name"] == name:
            return o["object"]
    raise AssertionError(f"no {kind}/{name}")


def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)", text)
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60}[m[2]]


def test_every_manifest_validates(node_modules, tmp_path):
    objects = load_all()
    kinds = sorted({(o["source"], o["object"]["kind"]) for o in objects})
    assert kinds == [("config.yaml", "ConfigMap"), ("config.yaml", "Secret"),
                     ("native-sidecar.yaml", "StatefulSet"), ("two-container.yaml", "StatefulSet")]
    code, problems = validate(node_modules, objects, tmp_path)
    assert code == 0, "\n".join(problems)


def test_the_validator_finds_mistakes(node_modules, tmp_path):
    """The check must be able to fail: typical slips in the sidecar manifest are reported."""
    sts = copy.deepcopy(find(load_all(), "StatefulSet", "web"))
    mailcar = sts["spec"]["template"]["spec"]["initContainers"][0]
    mailcar["restartPolcy"] = mailcar.pop("restartPolicy")          # misspelt field
    del mailcar["livenessProbe"]["httpGet"]["port"]                  # required field missing
    sts["spec"]["replicas"] = "two"                                  # wrong type
    sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["request"] = {}  # deep typo
    code, problems = validate(node_modules, [{"source": "broken", "object": sts}], tmp_path)
    text = "\n".join(problems)
    assert code == 1
    assert "initContainers[0].restartPolcy: no such field" in text
    assert "must have required property port" in text
    assert "replicas must be integer" in text
    assert "volumeClaimTemplates[0].spec.resources.request: no such field" in text


def containers_of(sts):
    spec = sts["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


@pytest.mark.parametrize("name,native", [("web", True), ("web-classic", False)])
def test_sidecar_contract(name, native):
    objects = load_all()
    sts = find(objects, "StatefulSet", name)
    config = yaml.safe_load(find(objects, "ConfigMap", "mailcar-config")["data"]["mailcar.yaml"])
    spec = sts["spec"]["template"]["spec"]
    mailcar = containers_of(sts)["mailcar"]
    if native:  # an init container that keeps running: started before the app, stopped after
        assert mailcar in spec["initContainers"] and mailcar["restartPolicy"] == "Always"
    else:
        assert mailcar in spec["containers"]
    assert mailcar["livenessProbe"]["httpGet"]["path"] == "/health"
    assert mailcar["readinessProbe"]["httpGet"]["path"] == "/ready"
    # The probes reach the pod IP, so the HTTP listener must not be loopback only.
    port = {p["name"]: p["containerPort"] for p in mailcar["ports"]}["mailcar-http"]
    assert config["listen"]["http"] == f"0.0.0.0:{port}"
    assert spec["terminationGracePeriodSeconds"] > seconds(config["limits"]["shutdown_grace"])
    mounts = {m["mountPath"]: m["name"] for m in mailcar["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/etc/mailcar"]]["configMap"]["name"] == "mailcar-config"
    assert volumes[mounts["/run/secrets/mailcar"]]["secret"]["secretName"] == "mailcar-secrets"
    # The spool is on a claim of its own per pod: it survives a restart or a new pod.
    spool_volume = mounts["/var/lib/mailcar"]
    assert spool_volume in [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]]
    assert config["spool"]["path"].startswith("/var/lib/mailcar/")
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_configmap_configuration_passes_check(tmp_path):
    objects = load_all()
    text = find(objects, "ConfigMap", "mailcar-config")["data"]["mailcar.yaml"]
    secrets = find(objects, "Secret", "mailcar-secrets")["stringData"]
    for key, value in secrets.items():
        (tmp_path / key).write_text(value)
    text = text.replace("/run/secrets/mailcar/", f"{tmp_path}/")
    text = text.replace("/var/lib/mailcar/spool", f"{tmp_path}/spool")
    assert "/run/secrets" not in text and "/var/lib/mailcar" not in text
    (tmp_path / "mailcar.yaml").write_text(text)
    proc = subprocess.run([MAILCAR_BIN, "--check", "-c", str(tmp_path / "mailcar.yaml")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
