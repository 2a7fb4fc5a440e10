"""The deployment artefacts, checked offline with the real tools.

* the Helm chart (``deploy/helm/signed-ledger``): ``helm lint --strict``, ``helm template``
  with several value sets, and every rendered manifest validated against the Kubernetes API's
  JSON schemas (``kubernetes-validate``, strict: an unknown field fails) or, for KEDA's and
  the Prometheus Operator's resources, against the models generated from their CRDs
  (``cloudcoil-models-*``: a field the model does not know is refused too); then what the
  schemas cannot see: probes on ports the container has, a non-root read-only pod, the
  settings the stages really read, secrets only referenced, the autoscalers' caps;
* the alert rules (``deploy/observability``): ``promtool check rules`` and ``promtool test
  rules``; every expression of the rules and of the Grafana dashboard names only series and
  labels that :class:`shared.telemetry.Metrics` exports; each playbook of the runbook links
  its alert;
* the workflows (``.github/workflows``): ``actionlint``.

helm, promtool and actionlint are built with ``go install`` into the shared cache
(tests/support/deploy_tools.py); no network is used beyond the Go module proxy for that.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

from shared.settings import ENV_NAMES, Settings
from tests.support.deploy_tools import (
    ACTIONLINT,
    HELM,
    PROMTOOL,
    dashboard_expressions,
    exported_metrics,
    expression_problems,
    run_tool,
    tool,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "signed-ledger"
OBSERVABILITY = ROOT / "deploy" / "observability"
RULES = OBSERVABILITY / "ledger-alerts.yaml"
DASHBOARD = OBSERVABILITY / "ledger-dashboard.json"
RUNBOOK = ROOT / "docs" / "operations.md"
#: the Kubernetes versions the manifests are rendered for and validated against: the
#: oldest the chart supports (Chart.yaml's kubeVersion) and a current one
KUBE_VERSIONS = ("1.29.0", "1.33.0")
KUBE_VERSION = KUBE_VERSIONS[-1]
STAGES = ("ingest", "signer", "anchorer")
CRD_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "ScaledObject": ScaledObject,
    "TriggerAuthentication": TriggerAuthentication,
    "ServiceMonitor": ServiceMonitor,
}
#: value sets rendered and validated: the defaults, and every optional branch switched
VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "approle-https-pinned-no-autoscaling": [
        "--set", "vault.auth=approle", "--set", "ingest.tlsSecret=ledger-ingest-https",
        "--set", "rekor.publicKeyConfigMap=rekor-key", "--set", "keda.enabled=false",
        "--set", "ingest.autoscaling.enabled=false", "--set", "networkPolicy.enabled=false",
        "--set", "serviceMonitor.enabled=false", "--set", "migrations.enabled=false",
        "--set", "image.digest=sha256:" + "ab" * 32,
    ],
    "twelve-partitions": ["--set", "kafka.partitions=12"],
    "tracing-to-a-collector": [
        "--set", "extraEnv[0].name=LEDGER_OTEL_ENABLED", "--set-string", "extraEnv[0].value=true",
        "--set-json", 'networkPolicy.egress.otlp={"ports": [{"port": 4318}]}',
    ],
}


@pytest.fixture(scope="module")
def helm() -> Path:
    return tool(HELM)


@pytest.fixture(scope="module")
def promtool() -> Path:
    return tool(PROMTOOL)


@pytest.fixture(scope="module")
def actionlint() -> Path:
    return tool(ACTIONLINT)


def render(helm: Path, *args: str, kube_version: str = KUBE_VERSION) -> list[dict[str, Any]]:
    out = run_tool([helm, "template", "ledger", CHART, "--namespace", "ledger",
                    "--kube-version", kube_version, *args])
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


# --- schema validation ----------------------------------------------------------------------


def _dropped(given: Any, kept: Any, path: str = "") -> Iterator[str]:
    """Paths present in ``given`` but not in ``kept`` (fields a model does not know)."""
    if isinstance(given, dict):
        for key, value in given.items():
            if not isinstance(kept, dict) or key not in kept:
                yield f"{path}.{key}"
            else:
                yield from _dropped(value, kept[key], f"{path}.{key}")
    elif isinstance(given, list) and isinstance(kept, list):
        for n, (a, b) in enumerate(zip(given, kept, strict=False)):
            yield from _dropped(a, b, f"{path}[{n}]")


def schema_problems(doc: dict[str, Any], kube_version: str = KUBE_VERSION) -> list[str]:
    """Why ``doc`` does not validate against its kind's schema (empty: it does)."""
    kind = doc.get("kind", "?")
    model = CRD_MODELS.get(kind)
    if model is not None:
        try:
            parsed = model.model_validate(doc)
        except pydantic.ValidationError as exc:
            return [f"{kind}: {exc}"]
        kept = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return [f"{kind}: unknown field {p}" for p in _dropped(doc, kept)]
    try:
        kubernetes_validate.validate(doc, kube_version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{kind}: no schema to validate it against"]
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        return [f"{kind} {doc['metadata'].get('name')}: {where}: {exc.message}"]
    return []


@pytest.mark.timeout(1800)
def test_chart_lints_strictly(helm: Path) -> None:
    for args in VALUE_SETS.values():
        out = run_tool([helm, "lint", "--strict", "--kube-version", KUBE_VERSION, CHART, *args])
        assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout, out.stdout


@pytest.mark.timeout(1800)
def test_chart_refuses_values_that_make_no_sense(helm: Path) -> None:
    """values.schema.json: helm refuses these before rendering anything."""
    for setting, complaint in (("vault.auth=kerberos", "/vault/auth"),
                               ("kafka.partitions=0", "/kafka/partitions"),
                               ("image.digest=latest", "/image/digest"),
                               ("database.existingSecret=", "/database/existingSecret")):
        out = run_tool([helm, "template", "ledger", CHART, "--kube-version", KUBE_VERSION,
                        "--set", setting], expect_ok=False)
        assert out.returncode != 0 and complaint in out.stderr, (setting, out.stderr)


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_rendered_manifests_validate_against_the_api_schemas(
    helm: Path, value_set: str, kube_version: str
) -> None:
    docs = render(helm, *VALUE_SETS[value_set], kube_version=kube_version)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"} <= kinds
    problems = [p for doc in docs for p in schema_problems(doc, kube_version)]
    assert problems == []
    assert "Secret" not in kinds, "secrets are referenced, never rendered"


def test_the_schema_check_refuses_broken_manifests() -> None:
    """The validators catch what a typo in a template would make."""
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
            "metadata": {"labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    assert schema_problems(deployment) == []
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    assert schema_problems(typo)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    assert schema_problems(wrong_type)
    scaled: dict[str, Any] = {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "s"},
        "spec": {"scaleTargetRef": {"name": "d"}, "maxReplicaCount": 6,
                 "triggers": [{"type": "kafka", "metadata": {"topic": "t"}}]}}
    assert schema_problems(scaled) == []
    assert schema_problems({**scaled, "spec": {**scaled["spec"], "maxReplicas": 6}})
    assert schema_problems({**scaled, "spec": {**scaled["spec"], "maxReplicaCount": "many"}})
    assert schema_problems({"apiVersion": "example.com/v1", "kind": "Unknown",
                            "metadata": {"name": "u"}})


# --- what the schemas cannot see ------------------------------------------------------------


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _environment(container: dict[str, Any], config: dict[str, str]) -> dict[str, str]:
    """The process's environment: the ConfigMap, then the container's own variables (a
    secret's value replaced by a stand-in a real one would look like)."""
    env = dict(config)
    stand_ins = {"CRDB_DSN": "postgresql://ledger:secret@db.internal:5432/ledger"
                             "?sslmode=verify-full&sslrootcert=/etc/ledger/db/ca.crt"}
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", stand_ins.get(var["name"], "from-a-secret"))
    return env


@pytest.mark.timeout(1800)
def test_each_stage_runs_hardened_with_probes_on_its_real_health_endpoints(helm: Path) -> None:
    docs = render(helm)
    deployments = of_kind(docs, "Deployment")
    config = next(iter(of_kind(docs, "ConfigMap").values()))["data"]
    assert set(deployments) == {f"ledger-signed-ledger-{s}" for s in STAGES}
    for stage in STAGES:
        deployment = deployments[f"ledger-signed-ledger-{stage}"]
        pod = deployment["spec"]["template"]["spec"]
        container = _container(deployment)
        assert container["args"] == [stage]
        # non-root, read-only, nothing to escalate to
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"/tmp"} <= {m["mountPath"] for m in container["volumeMounts"]}
        assert container["resources"]["requests"] and container["resources"]["limits"]
        # the probes ask the endpoints the process serves, on the port it listens on
        env = _environment(container, config)
        settings = Settings.from_env(env).for_stage(stage)
        port = settings.http_port if stage == "ingest" else settings.metrics_port
        assert port > 0
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert settings.http_host == "0.0.0.0"
        for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"),
                            ("startupProbe", "/livez")):
            get = container[probe]["httpGet"]
            assert get["path"] == path
            assert ports[get["port"]] == port
        # every variable is one the settings read; the links are the verified ones
        assert set(env) <= set(ENV_NAMES.values()), set(env) - set(ENV_NAMES.values())
        assert settings.require_tls is True
        assert settings.kafka_security_protocol == "SSL"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        for path in (settings.kafka_ssl_cafile, settings.kafka_ssl_certfile,
                     settings.vault_token_file, settings.vault_cacert):
            assert any(path.startswith(m + "/") for m in mounts), path


@pytest.mark.timeout(1800)
def test_secrets_come_from_existing_secrets(helm: Path) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    wanted = {values["database"]["existingSecret"], values["database"]["caSecret"],
              values["vault"]["caSecret"], values["ingest"]["tokensSecret"],
              *values["kafka"]["tlsSecrets"].values(), *values["vault"]["tokenSecrets"].values()}
    for args, extra in (([], set()), (["--set", "vault.auth=approle"],
                                      set(values["vault"]["approleSecrets"].values()))):
        docs = render(helm, *args)
        text = json.dumps(docs)
        referenced = set(re.findall(r'"secretName": "([^"]+)"', text))
        referenced |= {ref["name"] for d in docs for ref in _secret_key_refs(d)}
        expected = wanted | extra
        if args:
            expected -= set(values["vault"]["tokenSecrets"].values())
        assert referenced == expected
        env = [v for d in docs for v in _all_env(d)]
        dsn = [v for v in env if v["name"] == "CRDB_DSN"]
        assert dsn and all("secretKeyRef" in v["valueFrom"] for v in dsn)
        assert not [v for v in env if v["name"] == "VAULT_TOKEN"], "tokens only as files"


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _secret_key_refs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for node in _walk(doc):
        if isinstance(node.get("secretKeyRef"), dict):
            yield node["secretKeyRef"]


def _all_env(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for node in _walk(doc):
        if "image" in node and "name" in node:
            yield from node.get("env", [])


@pytest.mark.timeout(1800)
def test_autoscaling_lag_for_the_stages_cpu_for_ingest_capped_at_the_partitions(
    helm: Path,
) -> None:
    for partitions in (6, 12):
        docs = render(helm, "--set", f"kafka.partitions={partitions}")
        deployments = of_kind(docs, "Deployment")
        scaled = of_kind(docs, "ScaledObject")
        defaults = Settings()
        groups = {"signer": (defaults.signer_group, defaults.topic_append),
                  "anchorer": (defaults.anchorer_group, defaults.topic_signed)}
        assert set(scaled) == {f"ledger-signed-ledger-{s}" for s in groups}
        for stage, (group, topic) in groups.items():
            spec = scaled[f"ledger-signed-ledger-{stage}"]["spec"]
            assert spec["maxReplicaCount"] == partitions
            assert spec["scaleTargetRef"]["name"] in deployments
            (trigger,) = spec["triggers"]
            assert trigger["type"] == "kafka"
            assert (trigger["metadata"]["consumerGroup"], trigger["metadata"]["topic"]) == (
                group, topic)
            auth = trigger["authenticationRef"]["name"]
            assert auth in of_kind(docs, "TriggerAuthentication")
            # the autoscaler owns the replica count
            assert "replicas" not in deployments[spec["scaleTargetRef"]["name"]]["spec"]
        (hpa,) = of_kind(docs, "HorizontalPodAutoscaler").values()
        assert hpa["spec"]["scaleTargetRef"]["name"] == "ledger-signed-ledger-ingest"
        assert "replicas" not in deployments["ledger-signed-ledger-ingest"]["spec"]
    docs = render(helm, "--set", "keda.enabled=false", "--set", "ingest.autoscaling.enabled=false")
    assert not of_kind(docs, "ScaledObject") and not of_kind(docs, "HorizontalPodAutoscaler")
    assert all("replicas" in d["spec"] for d in of_kind(docs, "Deployment").values())


@pytest.mark.timeout(1800)
def test_migrations_hook_pdbs_network_policies_and_service_monitor(helm: Path) -> None:
    docs = render(helm)
    (job,) = of_kind(docs, "Job").values()
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert _container_of_job(job)["args"] == ["migrate"]
    pdbs = of_kind(docs, "PodDisruptionBudget")
    assert {p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
            for p in pdbs.values()} == set(STAGES)
    policies = of_kind(docs, "NetworkPolicy")
    deny = policies["ledger-signed-ledger-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny
    ports_of = {c: {p["name"] for p in _container(d)["ports"]}
                for c, d in ((d["metadata"]["labels"]["app.kubernetes.io/component"], d)
                             for d in of_kind(docs, "Deployment").values())}
    for component, ports in ports_of.items():
        spec = policies[f"ledger-signed-ledger-{component}"]["spec"]
        allowed = {p["port"] for rule in spec["ingress"] for p in rule["ports"]}
        assert allowed == ports  # only the ports the stage serves
    # another egress key (a trace collector) opens for every stage, not for the migrations
    traced = of_kind(render(helm, *VALUE_SETS["tracing-to-a-collector"]), "NetworkPolicy")
    for component in (*STAGES, "migrate"):
        egress = traced[f"ledger-signed-ledger-{component}"]["spec"]["egress"]
        ports = {p["port"] for rule in egress for p in rule["ports"]}
        assert (4318 in ports) is (component != "migrate"), (component, ports)
        before = policies[f"ledger-signed-ledger-{component}"]["spec"]["egress"]
        assert 4318 not in {p["port"] for rule in before for p in rule["ports"]}
    (monitor,) = of_kind(docs, "ServiceMonitor").values()
    endpoints = {e["port"] for e in monitor["spec"]["endpoints"]}
    service_ports = {p["name"] for s in of_kind(docs, "Service").values()
                     for p in s["spec"]["ports"]}
    assert endpoints == service_ports == {"http", "ops"}


def _container_of_job(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return dict(container)


# --- alert rules and dashboard --------------------------------------------------------------


@pytest.mark.timeout(1800)
def test_alert_rules_check_and_pass_their_unit_tests(promtool: Path, tmp_path: Path) -> None:
    out = run_tool([promtool, "check", "rules", RULES])
    assert "SUCCESS" in out.stdout + out.stderr
    run_tool([promtool, "test", "rules", OBSERVABILITY / "ledger-alerts.test.yaml"])
    # the unit tests have teeth: a rule that waits too long fails them
    slower = RULES.read_text().replace("for: 5m", "for: 30m")
    assert slower != RULES.read_text()
    (tmp_path / RULES.name).write_text(slower)
    test_file = tmp_path / "ledger-alerts.test.yaml"
    test_file.write_text((OBSERVABILITY / "ledger-alerts.test.yaml").read_text())
    failed = run_tool([promtool, "test", "rules", test_file], expect_ok=False)
    assert failed.returncode != 0 and "LedgerVaultUnavailable" in failed.stdout + failed.stderr


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.mark.timeout(1800)
def test_dashboard_and_rules_use_only_exported_metrics(promtool: Path, tmp_path: Path) -> None:
    exported = exported_metrics()
    assert "ledger_receipt_verification_failures_total" in exported
    dashboard = json.loads(DASHBOARD.read_text())
    queries = dashboard_expressions(dashboard)
    assert len(queries) >= 15
    expressions = [e for _, e in queries] + [r["expr"] for r in _rules()]
    problems = {e: expression_problems(e, exported) for e in expressions}
    assert {e: p for e, p in problems.items() if p} == {}
    # a name or label that does not exist is caught
    assert expression_problems("rate(ledger_entries_sigend_total[5m])", exported)
    assert expression_problems('ledger_consumer_lag{stag="signer"}', exported)
    assert expression_problems("sum by (route) (ledger_consumer_lag)", exported)
    # and every dashboard query is valid PromQL: promtool parses them as recording rules
    recording = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{n}", "expr": e} for n, (_, e) in enumerate(queries)]}]}
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(recording))
    run_tool([promtool, "check", "rules", path])


def test_dashboard_covers_the_runbook_signals() -> None:
    queries = dashboard_expressions(json.loads(DASHBOARD.read_text()))
    text = "\n".join(e for _, e in queries)
    for series in ("ledger_appends_published_total", "ledger_entries_signed_total",
                   "ledger_entries_anchored_total", "ledger_vault_request_seconds_bucket",
                   "ledger_batches_anchored_total", "ledger_anchor_batch_size_bucket",
                   "ledger_pending_batches", "ledger_consumer_lag", "ledger_dlq_messages_total",
                   "ledger_receipt_verification_failures_total",
                   "ledger_unanchored_oldest_age_seconds"):
        assert series in text, series
    titles = {t.lower() for t, _ in queries}
    for words in ("entry rate per stage", "vault latency", "batches anchored",
                  "anchor batch size", "unanchored backlog", "backlog age", "consumer lag",
                  "dead-letter", "consistency failures"):
        assert any(words in t for t in titles), words


def test_every_runbook_playbook_links_its_alerts() -> None:
    runbook = RUNBOOK.read_text()
    section = runbook.split("## When something fails", 1)[1].split("\n## ", 1)[0]
    playbooks = re.split(r"\n(?=\*\*[^*]+\*\*)", section)[1:]
    assert len(playbooks) >= 9
    alerts = {r["alert"] for r in _rules()}
    linked: set[str] = set()
    for playbook in playbooks:
        names = set(re.findall(r"\[`(Ledger\w+)`\]\(\.\./deploy/observability/ledger-alerts\.yaml\)",
                               playbook))
        assert names, f"no alert linked from: {playbook[:60]}"
        assert names <= alerts, names - alerts
        linked |= names
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', runbook))
    for rule in _rules():
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in anchors or anchor == "tokens", anchor
    assert alerts - linked <= {"LedgerTokenExpiresSoon"}


# --- workflows ------------------------------------------------------------------------------


@pytest.mark.timeout(1800)
def test_workflows_pass_actionlint(actionlint: Path, tmp_path: Path) -> None:
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows
    run_tool([actionlint, "-no-color", *workflows], cwd=ROOT)
    # actionlint does look: an unknown context is refused
    broken = tmp_path / "broken.yml"
    broken.write_text(workflows[0].read_text().replace("${{ github.sha }}",
                                                       "${{ github.shaa }}", 1))
    assert broken.read_text() != workflows[0].read_text()
    refused = run_tool([actionlint, "-no-color", broken], expect_ok=False)
    assert refused.returncode != 0 and '"shaa" is not defined' in refused.stdout
