"""``deploy/``: the container image definition and the Kubernetes manifests agree with the code.

Nothing here runs a container or a cluster (there is neither on this machine). The checks read
every YAML document with ``yaml.safe_load_all``, the Containerfile line by line, and the TOML
configuration in the ConfigMap through the services' own configuration loaders, with the
environment each container would have: so an unknown key, a port that differs between the
configuration, the container, its Service and its probes, a probe that would not reach the
internal listener, a readiness probe that would not notice a lost database or HSM proxy, a
module that does not exist, a Secret nobody defines or a file a service reads that no Secret
provides each make a problem. The last test shows, case by case, that each kind of breach is
caught.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import importlib
import importlib.util
import json
import os
import posixpath
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

import cosigner.servicer
import hsm_proxy.servicer
import ra.admin
import ra.registry
import server.csc.admin
import server.public
from mobilesign.hosting import config as hosting_config
from mobilesign.hosting import devpki, probe
from mobilesign.testing.deployment import DEFAULT_PORTS, SERVICES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONTAINERFILE = DEPLOY / "Containerfile"

#: Configuration field of each listener.
_LISTEN_FIELD = {"internal": "listen", "public": "public_listen", "csc": "csc_listen"}
_REPLICAS: dict[str, Callable[[int], bool]] = {
    "gateway": lambda n: n >= 2,
    "cosigner": lambda n: n >= 2,
    "hsm-proxy": lambda n: n == 1,
    "ra": lambda n: n == 1,
}
_PROBE_MODULE = "mobilesign.hosting.probe"
#: The gRPC services each server serves, whose health names turn NOT_SERVING while a peer it
#: needs (its database, the HSM proxy) fails; the whole server's "" stays SERVING meanwhile.
_HEALTH_NAMES = {
    "gateway": {server.public.SERVICE, server.csc.admin.SERVICE},
    "cosigner": {cosigner.servicer.SERVICE},
    "ra": {ra.admin.SERVICE, ra.registry.SERVICE},
    "hsm-proxy": {hsm_proxy.servicer.SERVICE},
}
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


@dataclass(frozen=True)
class Service:
    """What the code says of one service: the module it runs as, its section, its listeners."""

    name: str
    module: str
    listeners: tuple[str, ...]

    @property
    def section(self) -> str:
        """Its configuration section (and environment prefix, upper-cased)."""
        return self.name.replace("-", "_")

    def load(self, document: dict[str, Any]) -> Any:
        """Its configuration, through its own loader (which refuses unknown keys)."""
        return importlib.import_module(f"{self.module}.config").load(document)

    def fields(self) -> set[str]:
        """The keys its configuration accepts."""
        loaded = self.load({})
        return {f.name for f in dataclasses.fields(loaded)}

    def own_keys(self) -> set[str]:
        """The private keys it serves with: its identity's, and its public edge's."""
        keys = {f"{self.name}.key"}
        if "public" in self.listeners:
            keys.add(f"{self.name}-public.key")
        return keys


SERVICE_BY_NAME = {name: Service(name, module, ports) for name, (module, ports) in SERVICES.items()}


def load_documents() -> list[dict[str, Any]]:
    """Every YAML document under deploy/, each with the file it came from (``_file``)."""
    documents = []
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        with path.open() as f:
            for document in yaml.safe_load_all(f):
                if document is not None:
                    documents.append({**document, "_file": str(path.relative_to(DEPLOY))})
    return documents


# --- the container image ---------------------------------------------------------------------


def _instructions(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number, keyword, arguments) of each instruction, continuation lines joined."""
    pending: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if not pending:
            start = number
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        pending.append(stripped.removesuffix("\\").strip())
        if not stripped.endswith("\\"):
            keyword, _, arguments = " ".join(pending).partition(" ")
            pending = []
            yield start, keyword, arguments.strip()


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _command_modules(command: list[str]) -> list[str]:
    """The modules a ``python -m MODULE`` command line runs."""
    return [command[i + 1] for i, word in enumerate(command[:-1]) if word == "-m"]


def containerfile_problems(text: str) -> list[str]:
    """What is wrong with the image definition, read line by line."""
    found = []
    instructions = list(_instructions(text))
    if not instructions or instructions[0][1] != "FROM":
        found.append("Containerfile: the first instruction is not FROM")
    stages: list[list[tuple[int, str, str]]] = []
    for number, keyword, arguments in instructions:
        if keyword not in _INSTRUCTIONS:
            found.append(f"Containerfile:{number}: unknown instruction {keyword}")
        if not arguments:
            found.append(f"Containerfile:{number}: {keyword} without arguments")
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((number, keyword, arguments))
        if keyword in ("COPY", "ADD") and not arguments.startswith("--from"):
            for source in arguments.split()[:-1]:
                if not source.startswith("--") and not (ROOT / source).exists():
                    found.append(f"Containerfile:{number}: {source} is not in the repository")
    if not stages:
        return found
    final = stages[-1]
    base = final[0][2].split()[0]
    if not re.fullmatch(r"(docker\.io/)?(library/)?debian:bookworm-slim", base):
        found.append(f"Containerfile: the image is not built on Debian bookworm slim ({base})")
    users = [arguments for _, keyword, arguments in final if keyword == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        found.append("Containerfile: the image does not run as a user other than root")
    for number, keyword, arguments in final:
        if keyword in ("CMD", "ENTRYPOINT"):
            try:
                command = json.loads(arguments)
            except json.JSONDecodeError:
                found.append(f"Containerfile:{number}: {keyword} is not in exec (JSON) form")
                continue
            for module in _command_modules(command):
                if not _module_exists(module):
                    found.append(f"Containerfile:{number}: no module {module}")
    return found


# --- the manifests ---------------------------------------------------------------------------


class Manifests:
    """The documents by kind and name, and the questions the checks ask of them."""

    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self.documents = documents
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.found: list[str] = []
        for document in documents:
            kind, name = document.get("kind"), document.get("metadata", {}).get("name")
            if kind == "Kustomization":
                name = document["_file"]  # kustomize's own file, never applied: no name
            if not document.get("apiVersion") or not kind or not name:
                self.found.append(f"{document['_file']}: a document without apiVersion/kind/name")
                continue
            if (kind, name) in self.objects:
                self.found.append(f"{document['_file']}: {kind} {name} is defined twice")
            self.objects[(kind, name)] = document

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """Every object of one kind."""
        return [o for (k, _), o in self.objects.items() if k == kind]

    def data(self, kind: str, name: str) -> dict[str, str] | None:
        """The decoded data of a Secret or ConfigMap, or None when it is not defined."""
        found = self.objects.get((kind, name))
        if found is None:
            return None
        values = dict(found.get("data") or {})
        if kind == "Secret":
            # Secret data is base64; a key file's bytes need not be text.
            values = {k: base64.b64decode(v).decode("latin-1") for k, v in values.items()}
        values.update(found.get("stringData") or {})
        return values

    def selected(self, selector: dict[str, str]) -> list[dict[str, Any]]:
        """The Deployments whose pods carry every label of ``selector``."""
        return [
            d
            for d in self.of_kind("Deployment")
            if selector and selector.items() <= _pod(d)["metadata"]["labels"].items()
        ]


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    template: dict[str, Any] = deployment["spec"]["template"]
    return template


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = _pod(deployment)["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _references(deployment: dict[str, Any]) -> Iterator[tuple[str, str, str | None]]:
    """(kind, name, key or None) of every ConfigMap and Secret a Deployment uses."""
    spec = _pod(deployment)["spec"]
    for volume in spec.get("volumes", []):
        sources = [volume] if "projected" not in volume else volume["projected"]["sources"]
        for source in sources:
            for field, kind, name_key in (
                ("configMap", "ConfigMap", "name"),
                ("secret", "Secret", "name"),
                ("secret", "Secret", "secretName"),
            ):
                if field in source and name_key in source[field]:
                    items = source[field].get("items") or [{"key": None}]
                    for item in items:
                        yield kind, source[field][name_key], item["key"]
    for container in _containers(deployment):
        for env in container.get("env", []):
            for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                ref = env.get("valueFrom", {}).get(field)
                if ref:
                    yield kind, ref["name"], ref["key"]
        for source in container.get("envFrom", []):
            for field, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                if field in source:
                    yield kind, source[field]["name"], None


def _environment(manifests: Manifests, container: dict[str, Any]) -> dict[str, str]:
    """The environment variables a container gets, Secret values read from the manifests."""
    env = {}
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = str(variable["value"])
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            env[variable["name"]] = (manifests.data("Secret", ref["name"]) or {}).get(
                ref["key"], ""
            )
    return env


def _mounted_file(
    manifests: Manifests, deployment: dict[str, Any], container: dict[str, Any], path: str
) -> str | None:
    """The content of the ConfigMap file ``path`` in ``container``, or None."""
    volumes = {v["name"]: v for v in _pod(deployment)["spec"].get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if posixpath.dirname(path) == mount["mountPath"].rstrip("/"):
            source = volumes.get(mount["name"], {}).get("configMap")
            if source:
                data = manifests.data("ConfigMap", source["name"]) or {}
                return data.get(posixpath.basename(path))
    return None


def _installed_files(deployment: dict[str, Any], state_dir: str) -> set[str]:
    """The files the init container copies from the projected ``secrets`` volume into the
    state directory (``for dir in /secrets/*/; do cp -RL ...``)."""
    spec = _pod(deployment)["spec"]
    init = {c["name"]: c for c in spec.get("initContainers", [])}.get("install-secrets")
    if init is None:
        return set()
    mounts = {m["name"]: m["mountPath"] for m in init.get("volumeMounts", [])}
    script = " ".join(init.get("command", []))
    if mounts.get("state") != state_dir or f"{mounts.get('secrets')}/*/" not in script:
        return set()
    volume = {v["name"]: v for v in spec.get("volumes", [])}.get("secrets", {})
    return {
        posixpath.join(state_dir, item["path"])
        for source in volume.get("projected", {}).get("sources", [])
        for item in source.get("secret", {}).get("items", [])
    }


def _check_probe(
    where: str,
    kind: str,
    service: Service,
    command: list[str],
    internal_port: int,
    files: set[str],
) -> list[str]:
    if command[:3] != ["python", "-m", _PROBE_MODULE]:
        return [f"{where}: the probe does not run python -m {_PROBE_MODULE}"]
    try:
        args = probe._parser().parse_args(command[3:])
    except SystemExit:
        return [f"{where}: the probe's arguments are not the probe's"]
    found = []
    host = args.address.rsplit(":", 1)[0]
    if host not in _LOOPBACK or _port(args.address) != internal_port:
        found.append(
            f"{where}: the probe asks {args.address}, not the internal listener "
            f"127.0.0.1:{internal_port}"
        )
    if args.server_name != service.name:
        found.append(f"{where}: the probe does not check the server is {service.name}")
    names = _HEALTH_NAMES[service.name]
    if kind == "readinessProbe" and args.service not in names:
        found.append(
            f"{where}: the probe asks about {args.service!r}, not one of {sorted(names)}: the pod"
            " would stay ready while its database or HSM proxy is lost"
        )
    if kind != "readinessProbe" and args.service:
        found.append(
            f'{where}: the probe asks about {args.service}, not the whole server (""): the'
            " loss of a peer would fail it"
        )
    for option in ("cert", "key", "ca"):
        if str(getattr(args, option)) not in files:
            found.append(
                f"{where}: the probe's --{option} {getattr(args, option)} is not installed"
            )
    return found


def _check_deployment(
    manifests: Manifests, service: Service, deployment: dict[str, Any]
) -> tuple[list[str], Any]:
    """Problems of one service's Deployment, and the configuration its container loads."""
    where = f"{deployment['_file']}: Deployment {service.name}"
    found = []
    replicas = deployment["spec"].get("replicas", 1)
    if not _REPLICAS[service.name](replicas):
        found.append(f"{where}: {replicas} replicas")
    spec = _pod(deployment)["spec"]
    if spec.get("securityContext", {}).get("runAsNonRoot") is not True:
        found.append(f"{where}: the pod may run as root")
    for container in _containers(deployment):
        context = container.get("securityContext", {})
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: {container['name']} may escalate privileges")
        if context.get("readOnlyRootFilesystem") is not True:
            found.append(f"{where}: {container['name']} has a writable root filesystem")
        if "ALL" not in context.get("capabilities", {}).get("drop", []):
            found.append(f"{where}: {container['name']} keeps capabilities")
        requests = container.get("resources", {}).get("requests", {})
        if not {"cpu", "memory"} <= requests.keys():
            found.append(f"{where}: {container['name']} requests no cpu or memory")
        for module in _command_modules(container.get("command", [])):
            if not _module_exists(module):
                found.append(f"{where}: {container['name']} runs no module {module}")
    main = [c for c in spec["containers"] if c["name"] == service.name]
    if len(main) != 1:
        return [*found, f"{where}: no container named {service.name}"], None
    container = main[0]
    if container.get("command") != ["python", "-m", service.module]:
        found.append(f"{where}: the command is not python -m {service.module}")

    env = _environment(manifests, container)
    prefix = hosting_config.ENV_PREFIX + service.section.upper() + "_"
    known = {f"{prefix}{key.upper()}" for key in service.fields()}
    for name in env:
        others = {"MOBILESIGN_CONFIG", "MOBILESIGN_STATE_DIR"}
        if name.startswith(hosting_config.ENV_PREFIX) and name not in known | others:
            found.append(f"{where}: {name} is not a key of [{service.section}]")
    if f"{prefix}DATABASE" not in env:
        found.append(f"{where}: no database: state would live in the pod's emptyDir")
    config_path = env.get("MOBILESIGN_CONFIG", "")
    text = _mounted_file(manifests, deployment, container, config_path)
    if text is None:
        return [*found, f"{where}: MOBILESIGN_CONFIG {config_path!r} is no ConfigMap file"], None
    document = tomllib.loads(text)
    try:
        # The container's environment only: the variables override the file, as in the pod.
        with mock.patch.dict(os.environ, env, clear=True):
            cfg = service.load(document)
            state_dir = str(hosting_config.state_dir(document))
    except hosting_config.ConfigError as exc:
        return [*found, f"{where}: configuration refused: {exc}"], None

    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    expected = {name: _port(getattr(cfg, _LISTEN_FIELD[name])) for name in service.listeners}
    if ports != expected:
        found.append(f"{where}: containerPorts {ports}, the configuration listens on {expected}")
    files = _installed_files(deployment, state_dir)
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    if mounts.get("state") != state_dir:
        found.append(f"{where}: the state volume is not mounted at {state_dir}")
        files = set()
    pki = posixpath.join(state_dir, "pki")
    needed = {f"{name}.pem" for name in (*devpki.IDENTITIES, *devpki.PUBLIC_EDGES)}
    for name in sorted({"ca.pem", *needed, *service.own_keys()}):
        if posixpath.join(pki, name) not in files:
            found.append(f"{where}: {pki}/{name} is not installed from a Secret")
    read = {k: v for k, v in dataclasses.asdict(cfg).items() if k.endswith("_file") and v}
    read |= {k: v for k, v in env.items() if k.endswith("_FILE") and k.startswith(prefix)}
    for key, value in env.items():
        # The CA that authenticates the database server, named in the DSN.
        for match in re.finditer(r"sslrootcert=([^&\s]+)", value):
            read[f"{key} sslrootcert"] = match.group(1)
    for key, path in sorted(read.items()):
        if str(path) not in files:
            found.append(f"{where}: {key} {path} is not installed from a Secret")
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        check = container.get(kind)
        if check is None:
            if kind != "startupProbe":
                found.append(f"{where}: no {kind}")
            continue
        command = check.get("exec", {}).get("command")
        if command is None:
            found.append(f"{where}: the {kind} is not an exec probe")
            continue
        found += _check_probe(
            f"{where} {kind}", kind, service, command, expected["internal"], files
        )
    return found, cfg


def _service_target(manifests: Manifests, service: dict[str, Any], port: int) -> tuple[str, str]:
    """(Deployment, containerPort name) a Service's ``port`` leads to, or ("", reason)."""
    selected = manifests.selected(service["spec"].get("selector", {}))
    if len(selected) != 1:
        return "", f"selects {len(selected)} Deployments"
    entries = [p for p in service["spec"]["ports"] if p["port"] == port]
    if not entries:
        return "", f"has no port {port}"
    target = entries[0].get("targetPort", port)
    for container in _pod(selected[0])["spec"]["containers"]:
        for container_port in container.get("ports", []):
            if target in (container_port.get("name"), container_port["containerPort"]):
                if container_port["containerPort"] != port:
                    return "", f"maps {port} to {container_port['containerPort']}"
                return selected[0]["metadata"]["name"], container_port.get("name", "")
    return "", f"targets {target}, which no container of {selected[0]['metadata']['name']} has"


def _reference_problems(manifests: Manifests) -> Iterator[str]:
    for deployment in manifests.of_kind("Deployment"):
        where = f"{deployment['_file']}: Deployment {deployment['metadata']['name']}"
        for kind, name, key in _references(deployment):
            data = manifests.data(kind, name)
            if data is None:
                yield f"{where}: {kind} {name} is not defined"
            elif key is not None and key not in data:
                yield f"{where}: {kind} {name} has no key {key}"


def _service_problems(manifests: Manifests) -> Iterator[str]:
    for kube_service in manifests.of_kind("Service"):
        where = f"{kube_service['_file']}: Service {kube_service['metadata']['name']}"
        for entry in kube_service["spec"]["ports"]:
            target, reason = _service_target(manifests, kube_service, entry["port"])
            if not target:
                yield f"{where} {reason}"


def _dialled_problems(manifests: Manifests, configs: dict[str, Any]) -> Iterator[str]:
    """Every address a service dials is a Service leading to that peer's internal listener."""
    for name, cfg in configs.items():
        for peer in SERVICE_BY_NAME.values():
            address = getattr(cfg, peer.section, None)
            if not isinstance(address, str) or peer.name == name:
                continue
            host, port = address.rsplit(":", 1)
            kube_service = manifests.objects.get(("Service", host.split(".")[0]))
            if kube_service is None:
                yield f"{name} dials {address}: no Service {host}"
                continue
            target, listener = _service_target(manifests, kube_service, int(port))
            if not target:
                yield f"{name} dials {address}: Service {host} {listener}"
            elif (target, listener) != (peer.name, "internal"):
                yield (
                    f"{name} dials {address} for the {peer.name}, which leads to the "
                    f"{listener} listener of the {target}"
                )


def _traffic_problems(manifests: Manifests) -> Iterator[str]:
    """Network policies, disruption budgets and routes name pods and ports that exist."""
    for policy in manifests.of_kind("NetworkPolicy"):
        pods = manifests.selected(policy["spec"]["podSelector"].get("matchLabels", {}))
        listening = {
            p["containerPort"]
            for d in pods
            for c in _pod(d)["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for rule in policy["spec"].get("ingress", []):
            for entry in rule.get("ports", []):
                if entry["port"] not in listening:
                    yield (
                        f"{policy['_file']}: NetworkPolicy {policy['metadata']['name']} opens "
                        f"port {entry['port']}, which its pods do not listen on"
                    )
    for budget in manifests.of_kind("PodDisruptionBudget"):
        if len(manifests.selected(budget["spec"]["selector"].get("matchLabels", {}))) != 1:
            yield f"PodDisruptionBudget {budget['metadata']['name']} selects no Deployment"
    for route in manifests.of_kind("GRPCRoute"):
        for rule in route["spec"]["rules"]:
            for backend in rule["backendRefs"]:
                kube_service = manifests.objects.get(("Service", backend["name"]))
                if (
                    kube_service is None
                    or not _service_target(manifests, kube_service, backend["port"])[0]
                ):
                    yield (
                        f"GRPCRoute {route['metadata']['name']}: no Service {backend['name']} "
                        f"port {backend['port']} leading to a container"
                    )
    for kustomization in manifests.of_kind("Kustomization"):
        directory = DEPLOY / posixpath.dirname(kustomization["_file"])
        for resource in kustomization.get("resources", []):
            if not (directory / resource).exists():
                yield f"{kustomization['_file']}: no resource {resource}"


def manifest_problems(documents: list[dict[str, Any]]) -> list[str]:
    """What is wrong with the Kubernetes manifests, or between them and the code."""
    manifests = Manifests(documents)
    found = list(manifests.found)
    deployments = {d["metadata"]["name"]: d for d in manifests.of_kind("Deployment")}
    configs: dict[str, Any] = {}
    for name, service in SERVICE_BY_NAME.items():
        if name not in deployments:
            found.append(f"no Deployment {name}")
            continue
        problems, cfg = _check_deployment(manifests, service, deployments[name])
        found += problems
        if cfg is not None:
            configs[name] = cfg
    found += _reference_problems(manifests)
    found += _service_problems(manifests)
    found += _dialled_problems(manifests, configs)
    found += _traffic_problems(manifests)
    return found


# --- the tests -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_mobilesign_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The configuration checked is the manifests', not whatever this process inherited.
    for name in list(os.environ):
        if name.startswith(hosting_config.ENV_PREFIX):
            monkeypatch.delenv(name)


def test_every_yaml_document_loads_and_names_itself() -> None:
    documents = load_documents()
    kinds = {d["kind"] for d in documents}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "Kustomization"} <= kinds
    assert Manifests(documents).found == []


def test_the_container_image_definition_is_sound() -> None:
    assert containerfile_problems(CONTAINERFILE.read_text()) == []


def test_the_manifests_agree_with_each_other_and_with_the_code() -> None:
    assert manifest_problems(load_documents()) == []


def test_the_example_configuration_keeps_the_built_in_ports() -> None:
    # Not required by Kubernetes, but the documentation and `make run` speak of these ports.
    manifests = Manifests(load_documents())
    text = (manifests.data("ConfigMap", "mobilesign-config") or {})["mobilesign.toml"]
    document = tomllib.loads(text)
    for (name, listener), port in DEFAULT_PORTS.items():
        cfg = SERVICE_BY_NAME[name].load(document)
        assert _port(getattr(cfg, _LISTEN_FIELD[listener])) == port, (name, listener)


def test_the_secrets_hold_no_values() -> None:
    # Placeholders only: a PEM that does not parse, an empty key file, a DSN to .invalid.
    manifests = Manifests(load_documents())
    for secret in manifests.of_kind("Secret"):
        for key, value in (manifests.data("Secret", secret["metadata"]["name"]) or {}).items():
            assert value == "" or "REPLACE" in value, (secret["metadata"]["name"], key)


# Each breach below is one the checks above must notice: (what, how to break a copy, a piece of
# the problem reported).
def _deployment(documents: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == name)


def _main(documents: list[dict[str, Any]], name: str) -> dict[str, Any]:
    container: dict[str, Any] = _pod(_deployment(documents, name))["spec"]["containers"][0]
    return container


def _configmap(documents: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in documents if d["kind"] == "ConfigMap" and "mobilesign.toml" in d["data"])


def _set_toml(documents: list[dict[str, Any]], old: str, new: str) -> None:
    data = _configmap(documents)["data"]
    assert old in data["mobilesign.toml"]
    data["mobilesign.toml"] = data["mobilesign.toml"].replace(old, new)


def _probe_argument(documents: list[dict[str, Any]], option: str, value: str) -> None:
    command = _main(documents, "cosigner")["livenessProbe"]["exec"]["command"]
    command[command.index(option) + 1] = value


def _probe_service(documents: list[dict[str, Any]], name: str, kind: str, service: str) -> None:
    """Make the probe ask about ``service`` ("": leave ``--service`` out)."""
    command = _main(documents, name)[kind]["exec"]["command"]
    if "--service" in command:
        at = command.index("--service")
        del command[at : at + 2]
    if service:
        command += ["--service", service]


def _projected_items(documents: list[dict[str, Any]], name: str, secret: str) -> list[Any]:
    volume = _pod(_deployment(documents, name))["spec"]["volumes"][1]
    source = next(s for s in volume["projected"]["sources"] if s["secret"]["name"] == secret)
    items: list[Any] = source["secret"]["items"]
    return items


def _service_port(documents: list[dict[str, Any]], name: str, port: int) -> None:
    service = next(d for d in documents if d["kind"] == "Service" and d["metadata"]["name"] == name)
    service["spec"]["ports"][0]["port"] = port


Breach = Callable[[list[dict[str, Any]]], None]
BREACHES: list[tuple[str, Breach, str]] = [
    (
        "a containerPort other than the configured one",
        lambda docs: _main(docs, "gateway")["ports"][0].update(containerPort=50099),
        "containerPorts",
    ),
    (
        "a listen port changed in the configuration only",
        lambda docs: _set_toml(docs, '"0.0.0.0:9443"', '"0.0.0.0:9444"'),
        "containerPorts",
    ),
    (
        "an unknown configuration key",
        lambda docs: _set_toml(docs, "[ra]\n", "[ra]\nlisten_port = 1\n"),
        "unknown keys in [ra]: listen_port",
    ),
    (
        "a Service port that is not the container's",
        lambda docs: _service_port(docs, "gateway-public", 443),
        "maps 443 to 8443",
    ),
    (
        "a Service whose targetPort no container has",
        lambda docs: next(
            d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "ra"
        )["spec"]["ports"][0].update(targetPort="grpc"),
        "targets grpc",
    ),
    (
        "a probe on the public port",
        lambda docs: _probe_argument(docs, "--address", "127.0.0.1:9443"),
        "not the internal listener",
    ),
    (
        "a probe checking another server name",
        lambda docs: _probe_argument(docs, "--server-name", "gateway"),
        "does not check the server is cosigner",
    ),
    (
        "a probe with a certificate no Secret installs",
        lambda docs: _probe_argument(docs, "--cert", "/var/lib/mobilesign/pki/admin2.pem"),
        "--cert /var/lib/mobilesign/pki/admin2.pem is not installed",
    ),
    (
        "a readiness probe asking about the whole server",
        lambda docs: _probe_service(docs, "ra", "readinessProbe", ""),
        "asks about '', not one of ['mobilesign.v1.AdminService', "
        "'mobilesign.v1.RegistrationService']",
    ),
    (
        "a readiness probe asking about a service the server does not serve",
        lambda docs: _probe_service(
            docs, "cosigner", "readinessProbe", "mobilesign.v1.GatewayService"
        ),
        "asks about 'mobilesign.v1.GatewayService', not one of ['mobilesign.v1.CosignerService']",
    ),
    (
        "a liveness probe asking about a service",
        lambda docs: _probe_service(
            docs, "gateway", "livenessProbe", "mobilesign.v1.GatewayService"
        ),
        "the loss of a peer would fail it",
    ),
    (
        "a probe that is Kubernetes' own grpc probe",
        lambda docs: _main(docs, "ra").update(readinessProbe={"grpc": {"port": 50054}}),
        "readinessProbe is not an exec probe",
    ),
    (
        "a probe running another command",
        lambda docs: _main(docs, "ra")["livenessProbe"]["exec"].update(command=["true"]),
        "does not run python -m mobilesign.hosting.probe",
    ),
    (
        "a container command naming a module that does not exist",
        lambda docs: _main(docs, "hsm-proxy").update(command=["python", "-m", "hsm_proxi"]),
        "runs no module hsm_proxi",
    ),
    (
        "a Secret nobody defines",
        lambda docs: _main(docs, "gateway")["env"][1]["valueFrom"]["secretKeyRef"].update(
            name="mobilesign-gateway-dsn"
        ),
        "Secret mobilesign-gateway-dsn is not defined",
    ),
    (
        "a ConfigMap nobody defines",
        lambda docs: _configmap(docs)["metadata"].update(name="mobilesign-settings"),
        "ConfigMap mobilesign-config is not defined",
    ),
    (
        "a file the configuration reads that no Secret installs",
        lambda docs: _set_toml(docs, "keys/record.key", "keys/records.key"),
        "record_key_file /var/lib/mobilesign/keys/records.key is not installed",
    ),
    (
        "a certificate missing from a service's PKI",
        lambda docs: _projected_items(docs, "ra", "mobilesign-certificates").pop(0),
        "/var/lib/mobilesign/pki/ca.pem is not installed from a Secret",
    ),
    (
        "the state directory moved in the configuration only",
        lambda docs: _set_toml(docs, 'state_dir = "/var/lib/mobilesign"', 'state_dir = "/srv"'),
        "the state volume is not mounted at /srv",
    ),
    (
        "a single gateway",
        lambda docs: _deployment(docs, "gateway")["spec"].update(replicas=1),
        "Deployment gateway: 1 replicas",
    ),
    (
        "two HSM proxies on one partition",
        lambda docs: _deployment(docs, "hsm-proxy")["spec"].update(replicas=2),
        "Deployment hsm-proxy: 2 replicas",
    ),
    (
        "a writable root filesystem",
        lambda docs: _main(docs, "cosigner")["securityContext"].update(
            readOnlyRootFilesystem=False
        ),
        "cosigner has a writable root filesystem",
    ),
    (
        "an environment variable naming no key",
        lambda docs: _main(docs, "cosigner")["env"].append(
            {"name": "MOBILESIGN_COSIGNER_PIN_ATTEMPTS", "value": "3"}
        ),
        "MOBILESIGN_COSIGNER_PIN_ATTEMPTS is not a key of [cosigner]",
    ),
    (
        "another service's address dialled",
        lambda docs: _set_toml(docs, 'cosigner = "cosigner:50052"', 'cosigner = "ra:50054"'),
        "gateway dials ra:50054 for the cosigner, which leads to the internal listener of the ra",
    ),
    (
        "a network policy opening a port nobody listens on",
        lambda docs: next(
            d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "ra"
        )["spec"]["ingress"][0]["ports"][0].update(port=50053),
        "opens port 50053",
    ),
    (
        "a route to a port the Service does not have",
        lambda docs: next(d for d in docs if d["kind"] == "GRPCRoute")["spec"]["rules"][0][
            "backendRefs"
        ][0].update(port=443),
        "GRPCRoute",
    ),
]


@pytest.mark.parametrize(
    ("breach", "expected"), [(b, e) for _, b, e in BREACHES], ids=[w for w, _, _ in BREACHES]
)
def test_each_breach_of_a_manifest_is_caught(breach: Breach, expected: str) -> None:
    documents = copy.deepcopy(load_documents())
    breach(documents)
    problems = manifest_problems(documents)
    assert any(expected in p for p in problems), problems


CONTAINERFILE_BREACHES = [
    ("an ARG before FROM", lambda t: "ARG X=1\n" + t, "first instruction is not FROM"),
    ("no USER", lambda t: t.replace("USER 10001:10001\n", ""), "other than root"),
    ("USER root", lambda t: t.replace("USER 10001:10001", "USER root"), "other than root"),
    ("USER 0", lambda t: t.replace("USER 10001:10001", "USER 0:0"), "other than root"),
    ("another base", lambda t: t.replace("bookworm-slim\n", "trixie\n"), "bookworm slim"),
    ("a misspelt module", lambda t: t.replace('"server"]', '"servr"]'), "no module servr"),
    (
        "a shell-form CMD",
        lambda t: t.replace('CMD ["python", "-m", "server"]', "CMD python -m server"),
        "exec (JSON) form",
    ),
    (
        "a COPY of a missing folder",
        lambda t: t.replace("COPY client ", "COPY clients "),
        "clients is not in the repository",
    ),
    (
        "a misspelt instruction",
        lambda t: t.replace("WORKDIR", "WORKDIRR"),
        "unknown instruction WORKDIRR",
    ),
]


@pytest.mark.parametrize(
    ("change", "expected"),
    [(c, e) for _, c, e in CONTAINERFILE_BREACHES],
    ids=[w for w, _, _ in CONTAINERFILE_BREACHES],
)
def test_each_breach_of_the_container_image_definition_is_caught(
    change: Callable[[str], str], expected: str
) -> None:
    text = CONTAINERFILE.read_text()
    broken = change(text)
    assert broken != text
    problems = containerfile_problems(broken)
    assert any(expected in p for p in problems), problems
