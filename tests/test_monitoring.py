"""Monitoring files: deploy/prometheus (scrape config, alert rules and their unit tests),
deploy/grafana (the dashboard and its provisioning) and the compose profile `monitoring` that runs them.

Tools nobody here wrote check them: promtool (Debian's `prometheus` package; `.ci/run` installs it)
checks the config, the rules and every dashboard query, and runs the rules' unit tests. Every series
the dashboard and the rules read must be one a live ingress on a real Redis really exports.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from ingress.metrics import RQ_DRAIN_WORKERS, live_workers
from shared import errors, keys
from shared.redis_server import RedisServer
from simulator.receiver import WebhookReceiver
from simulator.server import ChatServer
from simulator.transcript import EventSpec
from tests.processes import relay_env, relay_processes, wait_for
from tests.pushes import body, event, payload_message, trigger_message

yaml: Any = importlib.import_module("yaml")  # PyYAML (extra `test`) ships no type hints

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "gms-relay.json"
COMPOSE = ROOT / "docker-compose.yml"
GRID_COLUMNS = 24

# Series Prometheus makes itself for every target, not the relay.
SCRAPE_SERIES = {"up"}
SCRAPE_LABELS = {"job", "instance"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset"}


def series_names(expr: str) -> set[str]:
    """The series a PromQL expression reads: identifiers that are not functions, aggregations,
    keywords, label names (in braces or grouping clauses), durations or strings."""
    bare = _STRING.sub('""', expr)
    bare = re.sub(r"\{[^}]*\}", " ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    bare = _GROUPING.sub(" ", bare)
    bare = re.sub(r"\boffset\s+\w+", " ", bare)
    names = set()
    for match in _IDENTIFIER.finditer(bare):
        called = bare[match.end() :].lstrip().startswith("(")
        if not called and match.group() not in _KEYWORDS:
            names.add(match.group())
    return names


def label_names(expr: str) -> set[str]:
    """Label names an expression groups or matches by."""
    found = {name.strip() for group in _GROUPING.findall(expr) for name in group.split(",") if name.strip()}
    for _, matchers in _SELECTOR.findall(expr):
        found |= {name for name, _, _ in _MATCHER.findall(matchers)}
    return found


def equality_matchers(expr: str) -> list[tuple[str, str, str]]:
    """(series, label, value) of every `series{label="value"}` matcher."""
    return [
        (series, label, value)
        for series, matchers in _SELECTOR.findall(expr)
        for label, op, value in _MATCHER.findall(matchers)
        if op == "="
    ]


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for panel in dashboard()["panels"] for p in [panel, *panel.get("panels", [])]]


def dashboard_exprs() -> list[str]:
    """Every dashboard query, with Grafana's `$__rate_interval` made a PromQL duration."""
    return [
        target["expr"].replace("$__rate_interval", "1m")
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
    ]


def used_exprs() -> list[str]:
    return dashboard_exprs() + [rule["expr"] for rule in rules()]


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: install Debian's prometheus package (promtool); .ci/run does")
    return found


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_rules_and_the_scrape_config(promtool: str) -> None:
    checked = run(promtool, "check", "rules", PROMETHEUS / "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = run(promtool, "check", "config", PROMETHEUS / "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_each_alert_fires_on_its_failure_and_never_on_a_healthy_system(promtool: str) -> None:
    tested = run(promtool, "test", "rules", PROMETHEUS / "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    cases = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    fires = {t["alertname"] for case in cases for t in case["alert_rule_test"] if t["exp_alerts"]}
    healthy = next(case for case in cases if case["name"].startswith("healthy"))
    quiet = {t["alertname"] for t in healthy["alert_rule_test"] if t["exp_alerts"] == []}
    alerts = {rule["alert"] for rule in rules()}
    assert alerts == fires, f"alerts without a firing case: {sorted(alerts - fires)}"
    assert alerts == quiet, f"alerts not checked on the healthy system: {sorted(alerts - quiet)}"


def test_every_dashboard_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Each query as a recording rule, so that promtool parses it."""
    recorded = [{"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(dashboard_exprs())]
    assert recorded
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    checked = run(promtool, "check", "rules", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_5xx_rule_counts_every_server_error_code() -> None:
    def family(cls: type[errors.RelayError]) -> Iterator[type[errors.RelayError]]:
        yield cls
        for sub in cls.__subclasses__():
            yield from family(sub)

    server_errors = {cls.code for cls in family(errors.RelayError) if cls.status >= 500}
    rule = next(r for r in rules() if r["alert"] == "GmsRelayIngress5xxRatioHigh")
    matched = {m for _, _, _, value in _regex_matchers(rule["expr"]) for m in value.split("|")}
    assert matched == server_errors


def _regex_matchers(expr: str) -> list[tuple[str, str, str, str]]:
    return [
        (series, label, op, value)
        for series, matchers in _SELECTOR.findall(expr)
        for label, op, value in _MATCHER.findall(matchers)
        if op == "=~"
    ]


def test_the_rules_and_the_dashboard_select_the_scraped_job() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert config["rule_files"] == ["alerts.yml"]
    selected = {
        value for expr in used_exprs() for _, label, value in equality_matchers(expr) if label == "job"
    }
    assert selected and selected <= jobs


def test_the_dashboard_layout_fits_grafanas_grid() -> None:
    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= GRID_COLUMNS
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
    titles = " / ".join(p["title"].lower() for p in panels)
    wanted = ["pushes by outcome", "ingress reply latency", "refresh latency", "retries", "trigger-to-stream"]
    wanted += ["per sink", "dead-lettered", "queue depth", "dirty chats", "parked chats"]
    assert [w for w in wanted if w not in titles] == []


def test_the_dashboard_reads_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = provisioned["datasources"]
    assert source["type"] == "prometheus"
    (variable,) = [v for v in dashboard()["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus" and variable["current"]["value"] == source["uid"]
    for panel in dashboard_panels():
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": f"${{{variable['name']}}}"}


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A compose service's bind mounts: path in the container -> path in this repository."""
    pairs = (volume.split(":")[:2] for volume in service.get("volumes", []))
    return {target: ROOT / source for source, target in pairs if source.startswith("./")}


def test_the_monitoring_profile_runs_prometheus_and_grafana_on_these_files() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == grafana["profiles"] == ["monitoring"]
    # Prometheus reads deploy/prometheus: the scrape config and the rules it names.
    flag = next(Path(a.partition("=")[2]) for a in prometheus["command"] if a.startswith("--config.file="))
    config = mounts(prometheus)[str(flag.parent)] / flag.name
    assert config == PROMETHEUS / "prometheus.yml"
    scrape = yaml.safe_load(config.read_text())
    assert all((config.parent / rules).is_file() for rules in scrape["rule_files"])
    ((discovery,),) = [job["dns_sd_configs"] for job in scrape["scrape_configs"]]
    ingress = services["ingress"]["command"]
    assert (
        discovery["names"] == ["ingress"] and str(discovery["port"]) == ingress[ingress.index("--port") + 1]
    )
    # Grafana: its provisioning, the dashboards directory its provider reads, Prometheus as datasource.
    mounted = mounts(grafana)
    provisioning = mounted["/etc/grafana/provisioning"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "gms-relay.yml").read_text())["providers"]
    assert mounted[provider["options"]["path"]] / DASHBOARD.name == DASHBOARD
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert mounted[str(home.parent)] / home.name == DASHBOARD
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == f"http://prometheus:{prometheus['ports'][0].rsplit(':', 1)[1]}"
    assert grafana["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    # Nothing here needs to be reachable from other hosts, and Prometheus has no authentication.
    assert all(port.startswith("127.0.0.1:") for s in (prometheus, grafana) for port in s["ports"])
    assert "GF_SECURITY_ADMIN_PASSWORD" in " ".join(grafana["entrypoint"]), "never admin/admin"


def test_the_layout_picture_renders_from_the_dashboard(tmp_path: Path) -> None:
    out = tmp_path / "layout.png"
    script = GRAFANA / "render_layout.py"
    rendered = run(sys.executable, script, "--dashboard", DASHBOARD, "--out", out)
    assert rendered.returncode == 0, rendered.stderr
    assert out.read_bytes().startswith(b"\x89PNG")
    assert (ROOT / "docs" / "grafana-dashboard.png").read_bytes().startswith(b"\x89PNG")


def test_live_workers_counts_relay_workers_whose_registration_lives(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    from rq import Queue, SimpleWorker
    from rq.worker_registration import WORKERS_BY_QUEUE_KEY

    assert RQ_DRAIN_WORKERS == WORKERS_BY_QUEUE_KEY % keys.DRAIN_QUEUE

    def count() -> int:
        async def counted() -> int:
            client = aioredis.Redis.from_url(redis_server.url)
            try:
                return await live_workers(client)
            finally:
                await client.aclose()

        return asyncio.run(counted())

    def worker(queue: str) -> SimpleWorker:
        return SimpleWorker([Queue(queue, connection=redis_client)], connection=redis_client)

    assert count() == 0
    other_app = worker("someone-elses-queue")
    other_app.register_birth()  # type: ignore[no-untyped-call]
    assert count() == 0
    relay, killed = worker(keys.DRAIN_QUEUE), worker(keys.DRAIN_QUEUE)
    relay.register_birth()  # type: ignore[no-untyped-call]
    killed.register_birth()  # type: ignore[no-untyped-call]
    assert count() == 2
    redis_client.delete(killed.key)  # what its registration's expiry does after a SIGKILL
    assert count() == 1
    relay.register_death()  # type: ignore[no-untyped-call]
    assert count() == 0


def exposition(text: str) -> dict[str, list[dict[str, str]]]:
    """Sample name -> the label sets it is exported with, parsed by prometheus_client."""
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return samples


def missing_series(samples: dict[str, list[dict[str, str]]]) -> list[str]:
    """What the dashboard and the rules read that the exposition lacks ([] when nothing is)."""
    exported_labels = {label for sets in samples.values() for labels in sets for label in labels}
    missing = []
    for expr in used_exprs():
        for name in series_names(expr) - SCRAPE_SERIES:
            if name not in samples:
                missing.append(f"series {name} (in {expr!r})")
        for label in label_names(expr) - exported_labels - SCRAPE_LABELS:
            missing.append(f"label {label} (in {expr!r})")
        for series, label, value in equality_matchers(expr):
            if series in samples and label not in SCRAPE_LABELS:
                if not any(labels.get(label) == value for labels in samples[series]):
                    missing.append(f'{series}{{{label}="{value}"}} (in {expr!r})')
    return sorted(set(missing))


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_every_series_the_dashboard_and_rules_read_is_exported_by_a_live_ingress(
    redis_server: RedisServer, redis_client: redis.Redis, chat_server: ChatServer, promtool: str
) -> None:
    """A real ingress and worker on a real Redis, a simulated GMS that first fails Refreshes, and three
    webhook sinks (accepting, 410 Gone, failing): pushes of every kind make every series exist."""
    chat = chat_server.store.create_chat(
        service="customer-support", nickname="Kim", device_id="dev-m", mode="reliable"
    )
    chat_server.store.append(chat.chat_id, [EventSpec("Message", "agent", "hi", {})], notify=False)
    chat_server.faults.fail_refresh_http503 = 1.0
    with (
        WebhookReceiver() as accepting,
        WebhookReceiver(status=410) as gone,
        WebhookReceiver(status=500) as failing,
    ):
        sinks = ",".join((accepting.url, gone.url, failing.url))
        env = relay_env(REDIS_URL=redis_server.url, GMS_URL=chat_server.base_url, WEBHOOK_URL=sinks)
        with relay_processes(env, workers=1) as relay, httpx.Client(base_url=relay.base_url) as http:

            def push(content: bytes) -> None:
                http.post("/push", content=content)

            def metrics() -> str:
                return http.get("/metrics").text

            trigger = trigger_message(
                1,
                session_id=chat.chat_id,
                user_id=chat.user_id,
                secure_key=chat.secure_key,
                app_dbid=chat.alias,
            )
            push(body(trigger, device_id=chat.device_id))
            wait_for(lambda: "gms_relay_refresh_retried_total" in metrics())
            chat_server.faults.fail_refresh_http503 = 0.0  # the retry now gets the events
            push(body(payload_message([event(1)], chat_id="payload-chat"), device_id="dev-p"))
            push(body("wake up", device_id="dev-w"))
            push(body(trigger_message(1, session_id="no-credentials"), device_id="dev-n"))  # parks
            push(b"{")
            wait_for(lambda: not missing_series(exposition(metrics())), timeout_s=90)
            text = metrics()
    assert missing_series(exposition(text)) == []
    linted = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr
