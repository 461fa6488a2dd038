"""deploy/helm/turnout: rendered by Helm's own engine (the Helm v4 SDK that helm-python-sdk
bundles), linted, and every command, setting, port, probe and secret checked against the code."""

from __future__ import annotations

import re
from pathlib import Path

import helm_python as helm  # helm-python-sdk, in the test extra
import pytest
import yaml

from tests.deploy.checks import CONFIG_PATH, DEPLOY, ROOT, parse_command, settings_with, stop_needs_s, turnout_env

CHART = DEPLOY / "helm" / "turnout"


def _render(values: dict | None = None) -> dict[str, dict]:
    """Objects by '<kind>/<name>'."""
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values or {}, name="prod", namespace="llm")
    out = {}
    for path, text in files.items():
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


@pytest.fixture(scope="module")
def objects() -> dict[str, dict]:
    return _render()


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def _pod(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def _env(container: dict) -> dict[str, str]:
    env = {}
    for e in container.get("env", []):
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] and ref["key"]
            env[e["name"]] = "<secret>"
        else:
            env[e["name"]] = e["value"]
    return env


def test_chart_lints_clean():
    report = helm.lint(str(CHART))
    assert report["errors"] == []
    assert not [m for m in report["messages"] if m["severity"] > 1], report["messages"]  # info only


def test_objects(objects):
    assert set(objects) == {
        "ConfigMap/prod-turnout", "Deployment/prod-turnout-service", "HorizontalPodAutoscaler/prod-turnout-service",
        "Service/prod-turnout", "Deployment/prod-turnout-sink", "Deployment/prod-turnout-learner",
        "Job/prod-turnout-migrate",
    }  # fmt: skip


def test_every_container_runs_a_real_command_with_the_config_it_is_given(objects):
    config = objects["ConfigMap/prod-turnout"]["data"]["turnout.toml"]
    commands = {}
    for key, obj in objects.items():
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        pod = _pod(obj)
        (container,) = pod["containers"]
        assert container["image"] == "turnout:0.1.0"
        args = parse_command(container["args"])
        commands[obj["metadata"]["labels"]["app.kubernetes.io/component"]] = args.command
        env = _env(container)
        assert env["TURNOUT_CLICKHOUSE_PASSWORD"] == "<secret>"  # from a Secret, never from values
        if args.config:
            assert args.config == CONFIG_PATH
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert Path(CONFIG_PATH).parent == Path(mounts["config"])
            assert volumes["config"]["configMap"]["name"] == "prod-turnout"
            settings = settings_with(config, turnout_env({k: v for k, v in env.items() if v != "<secret>"}))
        else:  # the migration hook runs before the ConfigMap exists: environment only
            settings = settings_with(None, turnout_env({k: v for k, v in env.items() if v != "<secret>"}))
        assert settings.storage.clickhouse_dsn == "http://clickhouse.clickhouse:8123"
        assert settings.storage.clickhouse_database == "turnout"
        if args.command != "migrate":
            assert settings.events.backend == "kafka"
            assert settings.events.bootstrap_servers == "kafka-bootstrap.kafka:9092"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # the image's USER
    assert commands == {"service": "serve", "sink": "sink", "learner": "learn", "migrate": "migrate"}


def test_service_probes_ports_and_autoscaling(objects, values):
    dep = objects["Deployment/prod-turnout-service"]
    (c,) = _pod(dep)["containers"]
    args = parse_command(c["args"])
    port = values["service"]["port"]
    assert args.port == port
    assert c["ports"] == [{"name": "http", "containerPort": port}]
    for probe in ("startupProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}  # 503 once stopping
    assert "replicas" not in dep["spec"]  # the autoscaler owns it
    hpa = objects["HorizontalPodAutoscaler/prod-turnout-service"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "prod-turnout-service"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    svc = objects["Service/prod-turnout"]["spec"]
    assert svc["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
    assert svc["selector"] == dep["spec"]["selector"]["matchLabels"] == dep["spec"]["template"]["metadata"]["labels"]
    fixed = _render({"service": {"autoscaling": {"enabled": False}, "replicas": 3}})
    assert "HorizontalPodAutoscaler/prod-turnout-service" not in fixed
    assert fixed["Deployment/prod-turnout-service"]["spec"]["replicas"] == 3


def test_sink_learner_and_migration_job(objects, values):
    sink = objects["Deployment/prod-turnout-sink"]["spec"]
    assert sink["replicas"] == values["sink"]["replicas"] <= values["kafka"]["partitions"]
    with pytest.raises(helm.HelmRenderError, match="sink.replicas must not exceed kafka.partitions"):
        _render({"sink": {"replicas": values["kafka"]["partitions"] + 1}})
    learner = objects["Deployment/prod-turnout-learner"]["spec"]
    assert learner["replicas"] == 1 and learner["strategy"] == {"type": "Recreate"}
    job = objects["Job/prod-turnout-migrate"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert _pod(job)["restartPolicy"] == "Never"
    # selectors are distinct per component, so the Service routes to service pods only
    labels = {k: objects[k]["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
              for k in objects if objects[k]["kind"] in ("Deployment", "Job")}  # fmt: skip
    assert sorted(labels.values()) == ["learner", "migrate", "service", "sink"]


def test_provider_keys_come_from_secrets_and_config_changes_roll_pods():
    objs = _render({"providerKeys": [{"env": "OPENAI_API_KEY", "secretName": "providers", "secretKey": "openai"}],
                    "config": "[router]\nn_clusters = 3\n"})  # fmt: skip
    for key in ("Deployment/prod-turnout-service", "Deployment/prod-turnout-sink", "Deployment/prod-turnout-learner"):
        (c,) = _pod(objs[key])["containers"]
        ref = next(e for e in c["env"] if e["name"] == "OPENAI_API_KEY")["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "providers", "key": "openai"}
        checksum = objs[key]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        assert re.fullmatch(r"[0-9a-f]{64}", checksum)
        assert checksum != _render()[key]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def test_a_stop_fits_in_each_pods_grace_period(objects):
    """SIGTERM to exit (service/serving.py) within terminationGracePeriodSeconds, or Kubernetes
    kills the pod with SIGKILL while it still holds accepted events."""
    config = objects["ConfigMap/prod-turnout"]["data"]["turnout.toml"]
    dep = objects["Deployment/prod-turnout-service"]
    (c,) = _pod(dep)["containers"]
    settings = settings_with(config, turnout_env({k: v for k, v in _env(c).items() if v != "<secret>"}))
    grace = _pod(dep)["terminationGracePeriodSeconds"]
    assert grace >= stop_needs_s(settings) + 5, (grace, stop_needs_s(settings))
    assert settings.server.shutdown_delay_s > 0  # readiness is off a while before the listener closes
    probe = c["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] <= settings.server.shutdown_delay_s  # seen in time
    assert '@get("/readyz")' in (ROOT / "service" / "app.py").read_text()
    for component in ("sink", "learner"):
        assert _pod(objects[f"Deployment/prod-turnout-{component}"])["terminationGracePeriodSeconds"] >= 30

