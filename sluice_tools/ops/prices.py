"""Published AWS prices `sluice plan` uses: ONE table, with the region and when it was read.

On-demand list prices, first pricing tier, no free tier applied (a plan should hold for an
account that has used its free tier up). Update the table and PRICES_READ_ON together.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_REGION = "us-east-1"
PRICES_READ_ON = "2026-11-01"


@dataclass(frozen=True)
class Price:
    usd: float
    unit: str
    source: str


PRICES: dict[str, Price] = {
    # https://aws.amazon.com/lambda/pricing/ (x86, first 6 billion GB-s a month)
    "lambda_request": Price(0.20 / 1_000_000, "request", "https://aws.amazon.com/lambda/pricing/"),
    "lambda_gb_second": Price(0.0000166667, "GB-second", "https://aws.amazon.com/lambda/pricing/"),
    # https://aws.amazon.com/sqs/pricing/ (FIFO, first 100 billion requests a month; every 64 KB
    # chunk of a request's payload counts as one request)
    "sqs_fifo_request": Price(0.50 / 1_000_000, "request", "https://aws.amazon.com/sqs/pricing/"),
    # https://aws.amazon.com/api-gateway/pricing/ (HTTP API, first 300 million a month, 512 KB metering)
    "http_api_request": Price(1.00 / 1_000_000, "request", "https://aws.amazon.com/api-gateway/pricing/"),
    # https://aws.amazon.com/eventbridge/pricing/ (scheduled rules deliver no custom events: no charge)
    "eventbridge_schedule": Price(0.0, "tick", "https://aws.amazon.com/eventbridge/pricing/"),
}


def price(name: str) -> float:
    return PRICES[name].usd
