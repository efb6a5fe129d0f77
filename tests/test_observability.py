"""Observability: every metric and model selector that the Grafana dashboard and
docs/observability.md use exists on a real Triton 2.51 scrape, the counters move as documented,
and docker-compose.yml wires Prometheus and Grafana to them with resource limits set."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from ofa_triton.client import PredictionError
from ofa_triton.tasks.visual_entailment.client import VisualEntailmentClient
from ofa_triton.export import export_repository
from ofa_triton.server import ServerOptions, TritonServer
from tests.test_deployment import with_defaults

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DASHBOARD = ROOT / "docker/grafana/dashboards/ofa-triton.json"
DOCS = ROOT / "docs/observability.md"
SAMPLE_IMAGE = ROOT / "examples/sample.jpg"

STEPS = ("ofa_preprocess", "ofa_encoder_decoder", "ofa_postprocess")
ENSEMBLE = "ofa_visual_entailment"
MODELS = (*STEPS, ENSEMBLE)
# The p99 panels read Triton's latency summaries, which 2.51 only exports with this flag.
SUMMARY_FLAG = "--metrics-config=summary_latencies=true"
# DCGM metrics: exported only where a GPU is (the NGC image on a GPU host), not on this CPU.
GPU_METRIC = re.compile(r"nv_gpu_\w+")
# Names in the PromQL that do not come from Triton (Prometheus' own scrape health).
PROMETHEUS_METRICS = {"up"}

SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL_PAIR = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


# --- Prometheus text and PromQL selectors -------------------------------------------------

def parse_scrape(text: str) -> list[tuple[str, dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        match = SAMPLE_LINE.match(line)
        if match and not line.startswith("#"):
            name, labels, value = match.groups()
            samples.append((name, dict(LABEL_PAIR.findall(labels or "")), float(value)))
    return samples


def total(samples, name: str, **labels) -> float:
    return sum(value for sample_name, sample_labels, value in samples if sample_name == name
               and all(sample_labels.get(key) == wanted for key, wanted in labels.items()))


def matches(matchers: list[tuple[str, str, str]], labels: dict[str, str]) -> bool:
    for label, operator, pattern in matchers:
        value = labels.get(label, "")
        found = re.fullmatch(pattern, value) is not None if "~" in operator else value == pattern
        if found == operator.startswith("!"):
            return False
    return True


def selectors(expression: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    return [(name, MATCHER.findall(body)) for name, body in SELECTOR.findall(expression)]


# --- Where the PromQL lives ---------------------------------------------------------------

def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text("utf-8"))


def dashboard_panels() -> list[dict]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_variables() -> dict[str, str]:
    """Each template variable as the dashboard opens: its default (or "All") value."""
    values = {"__rate_interval": "1m"}
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "textbox":
            values[variable["name"]] = variable["current"]["value"]
        elif variable.get("includeAll"):
            values[variable["name"]] = variable["allValue"]
    return values


def substitute(expression: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], expression)


def dashboard_expressions(values: dict[str, str] | None = None) -> list[str]:
    values = values or dashboard_variables()
    return [substitute(target["expr"], values)
            for panel in dashboard_panels() for target in panel["targets"]]


def docs_expressions() -> list[str]:
    text = DOCS.read_text("utf-8")
    expressions = re.findall(r"```promql\n(.*?)```", text, re.DOTALL)
    for block in re.findall(r"```yaml\n(.*?)```", text, re.DOTALL):
        for group in yaml.safe_load(block)["groups"]:
            expressions += [rule["expr"] for rule in group["rules"]]
    return expressions


# --- A real server, with some traffic -----------------------------------------------------

@pytest.fixture(scope="module")
def metrics_server(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("observability")
    export_repository(tiny_checkpoint, root / "repository", progress=lambda _: None)
    options = ServerOptions.loopback(root / "repository")   # server_command adds SUMMARY_FLAG
    with TritonServer(options, log_path=root / "server.log") as server:
        server.wait_ready()
        yield server


def scrape(server) -> list:
    url = f"http://127.0.0.1:{server.options.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return parse_scrape(response.read().decode())


@pytest.fixture(scope="module")
def traffic(metrics_server):
    """Scrapes before and after 3 valid requests (HTTP and gRPC) and 1 undecodable image."""
    before = scrape(metrics_server)
    image = SAMPLE_IMAGE.read_bytes()
    VisualEntailmentClient(metrics_server.http_url).predict(image, "two people walk")
    VisualEntailmentClient(metrics_server.http_url).predict(image, "a dog", premise="a city")
    VisualEntailmentClient(metrics_server.grpc_url, "grpc").predict(image, "a street")
    with pytest.raises(PredictionError):
        VisualEntailmentClient(metrics_server.http_url).predict(b"not an image", "a street")
    # Counters are updated as responses complete, the ensemble's failures in two steps:
    # wait until the failure has moved and two scrapes in a row agree.
    deadline = time.monotonic() + 10
    previous = None
    while True:
        after = scrape(metrics_server)
        moved = total(after, "nv_inference_request_failure", model=ENSEMBLE) > total(
            before, "nv_inference_request_failure", model=ENSEMBLE)
        counters = [s for s in after if s[0].startswith("nv_inference_") and "summary" not in s[0]]
        if (moved and counters == previous) or time.monotonic() > deadline:
            return before, after
        previous = counters
        time.sleep(0.5)


def delta(traffic, name: str, **labels) -> float:
    before, after = traffic
    return total(after, name, **labels) - total(before, name, **labels)


def test_success_and_failure_counters_move_as_documented(traffic):
    assert delta(traffic, "nv_inference_request_success", model=ENSEMBLE) == 3
    # Triton 2.51 counts a request failed inside a step twice at the ensemble, as OTHER
    # (docs/observability.md, "How failures are counted"; update both if this changes).
    assert delta(traffic, "nv_inference_request_failure", model=ENSEMBLE) == 2
    assert delta(traffic, "nv_inference_request_failure", model=ENSEMBLE, reason="OTHER") == 2
    for step in ("ofa_encoder_decoder", "ofa_postprocess"):
        assert delta(traffic, "nv_inference_request_success", model=step) == 3
        assert delta(traffic, "nv_inference_count", model=step) == 3
        assert 1 <= delta(traffic, "nv_inference_exec_count", model=step) <= 3
        assert delta(traffic, "nv_inference_request_failure", model=step) == 0
    # The bad image reached preprocess, which answered it with an error response.
    assert delta(traffic, "nv_inference_request_success", model="ofa_preprocess") + delta(
        traffic, "nv_inference_request_failure", model="ofa_preprocess") == 4
    # Durations accumulate for every model; summaries carry the p99 the dashboard plots.
    for model in MODELS:
        assert delta(traffic, "nv_inference_request_duration_us", model=model) > 0
        assert delta(traffic, "nv_inference_request_summary_us_count", model=model) >= 3
        assert total(traffic[1], "nv_inference_request_summary_us", model=model,
                     quantile="0.99") > 0


@pytest.mark.parametrize("source", ["dashboard", "docs"])
def test_every_promql_selector_matches_the_scrape(traffic, source):
    """Each metric exists, and each model regex selects exactly the models it names, all of
    which the scrape has for that metric (no panel silently empty for one step)."""
    samples = traffic[1]
    scraped_names = {name for name, _, _ in samples}
    expressions = dashboard_expressions() if source == "dashboard" else docs_expressions()
    assert len(expressions) >= 8
    checked = set()
    for expression in expressions:
        for name in set(re.findall(r"\b(nv_\w+)", expression)):
            assert name in scraped_names or GPU_METRIC.fullmatch(name), (name, expression)
        for name, matchers in selectors(expression):
            if GPU_METRIC.fullmatch(name) and name not in scraped_names:
                continue
            if not name.startswith("nv_"):
                assert name in PROMETHEUS_METRICS, (name, expression)
                continue
            selected = {labels.get("model") for sample_name, labels, _ in samples
                        if sample_name == name and matches(matchers, labels)}
            model_matchers = [m for m in matchers if m[0] == "model"]
            intended = {model for model in MODELS if matches(model_matchers, {"model": model})}
            if model_matchers:
                # A panel shows the service, every step, or all four: never a partial set.
                assert intended in ({ENSEMBLE}, set(STEPS), set(MODELS)), (expression, intended)
                assert selected == intended, (expression, selected, intended)
            else:
                assert selected, (name, expression)
            checked.add(name)
    # The metrics this service's panels and docs are about are all among those checked.
    assert {"nv_inference_request_success", "nv_inference_request_failure",
            "nv_inference_count", "nv_inference_exec_count", "nv_inference_queue_duration_us",
            "nv_inference_request_duration_us", "nv_inference_request_summary_us"} <= checked


def test_the_prefix_variable_selects_one_deployment():
    values = {**dashboard_variables(), "prefix": "large_"}
    for expression in dashboard_expressions(values):
        for _, matchers in selectors(expression):
            model = [m for m in matchers if m[0] == "model"]
            if model:
                assert not any(matches(model, {"model": name}) for name in MODELS), expression
                assert any(matches(model, {"model": f"large_{name}"}) for name in MODELS)


# --- The dashboard ------------------------------------------------------------------------

STEP_REGEX = "${prefix}ofa_(preprocess|encoder_decoder|postprocess)"
PANEL_KINDS = {
    "throughput": re.compile(r"rate\(nv_inference_count\{"),
    "p99 latency": re.compile(r'nv_inference_request_summary_us\{.*quantile="0\.99"'),
    "average batch size": re.compile(
        r"rate\(nv_inference_count\{.*\)\)\s*/\s*sum by \(model\) \(rate\(nv_inference_exec_count\{"),
    "queue time": re.compile(r"nv_inference_queue_(duration|summary)_us\{"),
}


@pytest.mark.parametrize("kind", sorted(PANEL_KINDS))
def test_dashboard_has_a_per_step_panel_of_each_kind(kind):
    panels = [panel for panel in dashboard_panels()
              if any(PANEL_KINDS[kind].search(target["expr"]) and STEP_REGEX in target["expr"]
                     for target in panel["targets"])]
    assert panels, f"no {kind} panel over the composing models"
    for panel in panels:
        for target in panel["targets"]:
            # One series per composing model, named after it.
            assert "by (model)" in target["expr"] and "{{model}}" in target["legendFormat"]
        assert panel["datasource"]["uid"] == "${datasource}"


def test_dashboard_variables_and_ids():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["prefix"]["type"] == "textbox" and variables["prefix"]["current"]["value"] == ".*"
    assert "nv_inference_count" in variables["instance"]["definition"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))


# --- docker-compose.yml: limits, Prometheus, Grafana --------------------------------------

def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text("utf-8"))


def host_path(service: dict, container_path: str) -> Path:
    """The file on this side of the service's bind mount that appears at container_path."""
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith(".") and (container_path + "/").startswith(target.rstrip("/") + "/"):
            return ROOT / source / container_path[len(target):].lstrip("/")
    raise AssertionError(f"{container_path} is not bind-mounted from the repository")


def test_triton_service_exports_latency_summaries():
    """The compose service runs `ofa-triton serve` (tests/test_container.py), whose server
    gets policy_flags, summaries included, in every model-control mode."""
    from ofa_triton.server import policy_flags

    triton = compose()["services"]["triton"]
    assert "--repository=/models" in triton["command"] and "8002:8002" in triton["ports"]
    assert all(SUMMARY_FLAG in policy_flags(mode) for mode in ("none", "explicit"))


def test_prometheus_scrapes_triton_metrics_port():
    services = compose()["services"]
    prometheus = services["prometheus"]
    [config_flag] = [f for f in prometheus["command"] if f.startswith("--config.file=")]
    config = yaml.safe_load(host_path(prometheus, config_flag.split("=", 1)[1]).read_text())
    targets = [target for job in config["scrape_configs"]
               if job.get("metrics_path", "/metrics") == "/metrics"
               for static in job["static_configs"] for target in static["targets"]]
    assert "triton:8002" in targets
    assert "triton" in services


def test_grafana_is_provisioned_with_the_dashboard_and_prometheus():
    services = compose()["services"]
    grafana = services["grafana"]
    environment = grafana["environment"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}",
                        environment["GF_SECURITY_ADMIN_PASSWORD"]), "a password from the env, no default"
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert with_defaults(grafana["ports"][0]).startswith("127.0.0.1:")

    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    [datasource] = [source for path in (provisioning / "datasources").glob("*.yml")
                    for source in yaml.safe_load(path.read_text())["datasources"]]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in services

    providers = [provider for path in (provisioning / "dashboards").glob("*.yml")
                 for provider in yaml.safe_load(path.read_text())["providers"]]
    dashboard_dirs = [host_path(grafana, p["options"]["path"]) for p in providers]
    assert any((folder / DASHBOARD.name).resolve() == DASHBOARD.resolve()
               for folder in dashboard_dirs)
    home = environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home).resolve() == DASHBOARD.resolve()


def test_bad_input_never_counts_as_a_backend_failure(metrics_server):
    """The premise of the BACKEND-failure alert (docs/faults.md, "Detect it"): every kind of
    bad input in tests/bad_inputs.py (invalid images and texts, requests that break the
    ensemble's contract), over HTTP and gRPC and interleaved with valid requests so that the
    dynamic batches mix them, leaves nv_inference_request_failure{reason="BACKEND"} of every
    step at exactly 0. Only a broken stub moves it (test_faults.py)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from tests.bad_inputs import (INVALID_IMAGES, INVALID_TEXTS, MALFORMED_REQUESTS, PROTOCOLS,
                                  bytes_tensor, infer, refusal)

    image = SAMPLE_IMAGE.read_bytes()
    refused_by_a_step, refused_by_triton, valid = [], [], []
    for protocol in PROTOCOLS:
        for make, fragment in INVALID_IMAGES.values():
            refused_by_a_step.append((protocol, {"image": bytes_tensor(make()),
                                                 "hypothesis": bytes_tensor(b"a dog")}, fragment))
        for hypothesis, premise, fragment in INVALID_TEXTS.values():
            inputs = {"image": bytes_tensor(image), "hypothesis": bytes_tensor(hypothesis)}
            if premise is not None:
                inputs["premise"] = bytes_tensor(premise)
            refused_by_a_step.append((protocol, inputs, fragment))
        for make, fragment in MALFORMED_REQUESTS.values():
            refused_by_triton.append((protocol, make(image), fragment))
        valid += [(protocol, {"image": bytes_tensor(image),
                              "hypothesis": bytes_tensor(f"a street {i}".encode())}, None)
                  for i in range(8)]
    jobs = refused_by_a_step + refused_by_triton + valid
    jobs = [jobs[i] for i in np.random.default_rng(0).permutation(len(jobs))]

    def send(job):
        protocol, inputs, fragment = job
        if fragment is None:
            return infer(metrics_server, protocol, inputs).as_numpy("label") is not None
        return fragment in refusal(metrics_server, protocol, inputs)

    before = scrape(metrics_server)
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(send, jobs))
    # The ensemble counts each request a step refused twice (see the test above); wait until
    # it has counted them all and two scrapes in a row agree.
    expected_ensemble_failures = total(before, "nv_inference_request_failure", model=ENSEMBLE) \
        + 2 * len(refused_by_a_step)
    deadline, previous = time.monotonic() + 10, None
    while True:
        after = scrape(metrics_server)
        counters = [s for s in after if s[0].startswith("nv_inference_") and "summary" not in s[0]]
        if (total(after, "nv_inference_request_failure", model=ENSEMBLE)
                >= expected_ensemble_failures and counters == previous) \
                or time.monotonic() > deadline:
            break
        previous = counters
        time.sleep(0.5)

    def change(name: str, **labels) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    for step in STEPS:
        backend = [value for name, labels, value in after
                   if name == "nv_inference_request_failure" and labels.get("model") == step
                   and labels.get("reason") == "BACKEND"]
        assert backend == [0.0], (step, backend)      # exported, and exactly 0
        assert change("nv_inference_request_failure", model=step, reason="BACKEND") == 0
        # No other reason either: a step's error response counts as a success.
        assert change("nv_inference_request_failure", model=step) == 0, step
    assert change("nv_inference_request_success", model="ofa_preprocess") \
        == len(valid) + len(refused_by_a_step)
    # At the ensemble: 2 OTHER per request a step refused, and the requests that Triton
    # refused before any model ran are counted nowhere, neither as failures nor successes.
    assert change("nv_inference_request_failure", model=ENSEMBLE, reason="OTHER") \
        == change("nv_inference_request_failure", model=ENSEMBLE) == 2 * len(refused_by_a_step)
    assert change("nv_inference_request_success", model=ENSEMBLE) == len(valid)
