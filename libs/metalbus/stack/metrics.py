"""`metalbus status`'s metrics column: scrape each running component's /metrics and boil it down to a few totals.

Region replicas and rack services serve /metrics on the ports ``metrics_ports`` gives them; the api serves its
own at ``GET /metrics`` on its port, behind an API key (``METALBUS_API_KEY``). The text is parsed with
prometheus_client's parser; a summary is a handful of totals summed over the labels that do not matter here.
"""

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from metalbus.stack.config import StackLayout, StackSettings, load_record, metrics_ports

API_KEY_ENV = "METALBUS_API_KEY"
SCRAPE_TIMEOUT_S = 3.0
Labels = Mapping[str, str]
Samples = list[tuple[str, dict[str, str], float]]


@dataclass(frozen=True)
class MetricsSummary:
    """A few totals of one component's metrics, or why there are none."""

    totals: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def as_json(self) -> dict[str, object]:
        """``metrics`` (the totals, null when unread) and ``metrics_error`` (why, or null)."""
        return {"metrics": self.totals if self.error is None else None, "metrics_error": self.error}

    def describe(self) -> str:
        if self.error is not None:
            return f"metrics: {self.error}"
        return ", ".join(f"{name} {value:g}" for name, value in self.totals.items())


def parse_samples(text: str) -> Samples:
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(samples: Samples, name: str, where: Callable[[Labels], bool] = lambda labels: True) -> float:
    """Sum of the samples called ``name`` whose labels pass ``where``."""
    return sum(value for sample, labels, value in samples if sample == name and where(labels))


def region_totals(samples: Samples) -> dict[str, float]:
    return {
        "requests": total(samples, "metalbus_region_requests_total"),
        "errors": total(samples, "metalbus_region_requests_total", lambda labels: labels.get("outcome") != "ok"),
        "outbox_backlog": total(samples, "metalbus_region_outbox_backlog_events"),
        "events_published": total(samples, "metalbus_region_outbox_published_events_total"),
    }


def api_totals(samples: Samples) -> dict[str, float]:
    return {
        "requests": total(samples, "metalbus_api_requests_total"),
        "server_errors": total(
            samples, "metalbus_api_requests_total", lambda labels: labels.get("status", "").startswith("5")
        ),
        "region_errors": total(samples, "metalbus_api_region_errors_total"),
    }


def rack_totals(component: str, samples: Samples) -> dict[str, float]:
    match component:
        case "rack-dhcp":
            return {
                "received": total(samples, "metalbus_rack_dhcp_received_total"),
                "acks": total(samples, "metalbus_rack_dhcp_replied_total", lambda labels: labels.get("type") == "ACK"),
                "dropped": total(samples, "metalbus_rack_dhcp_dropped_total"),
            }
        case "rack-tftp":
            return {
                "tftp_transfers": total(samples, "metalbus_rack_tftp_transfers_completed_total"),
                "http_requests": total(samples, "metalbus_rack_tftp_http_boot_requests_total"),
            }
        case "rack-power":
            return {
                "commands": total(samples, "metalbus_rack_power_commands_total"),
                "command_errors": total(
                    samples, "metalbus_rack_power_commands_total", lambda labels: labels.get("outcome") != "ok"
                ),
                "poll_rounds": total(samples, "metalbus_rack_power_poll_rounds_total"),
            }
        case _:
            return {
                "dns_queries": total(samples, "metalbus_rack_proxy_dns_queries_total"),
                "syslog_received": total(samples, "metalbus_rack_proxy_syslog_received_total"),
                "apt_requests": total(samples, "metalbus_rack_proxy_apt_requests_total"),
            }


def totals_of(component: str, samples: Samples) -> dict[str, float]:
    if component.startswith("region-"):
        return region_totals(samples)
    if component == "api":
        return api_totals(samples)
    return rack_totals(component, samples)


async def scrape_summary(
    client: httpx.AsyncClient, component: str, url: str, headers: dict[str, str]
) -> MetricsSummary:
    try:
        response = await client.get(url, headers=headers)
    except httpx.HTTPError as error:
        return MetricsSummary(error=f"{url}: {type(error).__name__}")
    if response.status_code != 200:
        return MetricsSummary(error=f"{url} answered {response.status_code}")
    try:
        samples = parse_samples(response.text)
    except ValueError as error:
        return MetricsSummary(error=f"{url}: unparsable ({error})")
    return MetricsSummary(totals=totals_of(component, samples))


def metrics_urls(settings: StackSettings) -> dict[str, tuple[str, dict[str, str]]]:
    """Component name → (its metrics URL, the headers to send)."""
    urls: dict[str, tuple[str, dict[str, str]]] = {
        name: (f"http://{settings.host}:{port}/metrics", {}) for name, port in metrics_ports(settings).items()
    }
    api_key = os.environ.get(API_KEY_ENV)
    if api_key:
        urls["api"] = (f"http://{settings.host}:{settings.api_port}/metrics", {"Authorization": f"Bearer {api_key}"})
    return urls


async def summarise_metrics(settings: StackSettings, running: list[str]) -> dict[str, MetricsSummary]:
    """A summary for each of the ``running`` components that has metrics (the api only with an API key)."""
    urls = metrics_urls(settings)
    if "api" in running and "api" not in urls:
        unavailable = {"api": MetricsSummary(error=f"set {API_KEY_ENV} to read the api's /metrics")}
    else:
        unavailable = {}
    wanted = [name for name in running if name in urls]
    async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S) as client:
        found = await asyncio.gather(*(scrape_summary(client, name, *urls[name]) for name in wanted))
    return unavailable | dict(zip(wanted, found, strict=True))


async def stack_metrics(state_dir: Path, running: list[str]) -> dict[str, MetricsSummary]:
    """``summarise_metrics`` for the stack recorded in ``state_dir`` (none when no stack was started there)."""
    settings = load_record(StackLayout(state_dir))
    return {} if settings is None else await summarise_metrics(settings, running)


def summary_json(summaries: Mapping[str, MetricsSummary], component: str) -> dict[str, object]:
    """A `status --json` row's metrics fields: both null for a component without metrics (nats, postgres)."""
    summary = summaries.get(component)
    return summary.as_json() if summary is not None else {"metrics": None, "metrics_error": None}
