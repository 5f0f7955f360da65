"""What an answer cost in US dollars: the config's ``pricing`` overrides first, else genai-prices' maintained table.

A model's rates are looked up once per (credential, model) and kept as plain floats, so pricing an answer is a
few multiplications, never a walk of the table (genai-prices' own ``calc_price`` takes half a millisecond).
A model neither knows costs 0 and is counted as unpriced; pricing never fails a request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fnmatch import translate
from typing import Any

from genai_prices import data_snapshot
from genai_prices.types import TieredPrices

from .config import ModelPrice
from .translate.canonical import Usage

PER_MILLION = 1e-6
#: (prompt tokens above which a price applies, US dollars per token), highest threshold first; the last is the base.
Rate = tuple[tuple[int, float], ...]
_CACHE_LIMIT = 4096  # (credential, model) pairs kept; bounded by the config, the limit only guards discovery


@dataclass(frozen=True, slots=True)
class Rates:
    """A model's prices per token. Each applies by the prompt's size, as providers' long-context tiers do."""

    input: Rate
    output: Rate
    cached: Rate
    cache_write: Rate

    def cost(self, usage: Usage) -> float:
        prompt = usage.input
        fresh = max(0, prompt - usage.cached - usage.cache_write)
        cache = usage.cached * _at(self.cached, prompt) + usage.cache_write * _at(self.cache_write, prompt)
        return fresh * _at(self.input, prompt) + cache + usage.output * _at(self.output, prompt)


def _at(rate: Rate, prompt: int) -> float:
    for start, price in rate:
        if prompt > start:
            return price
    return 0.0


def _flat(per_million: float) -> Rate:
    return ((-1, per_million * PER_MILLION),)


def override_rates(price: ModelPrice) -> Rates:
    cached = price.input if price.cached_input is None else price.cached_input
    return Rates(_flat(price.input), _flat(price.output), _flat(cached), _flat(price.input))


def _rate(value: Any, fallback: Rate) -> Rate:
    """One genai-prices price (a Decimal, or tiers over a base) per token."""
    if isinstance(value, TieredPrices):
        tiers = sorted(((t.start, float(t.price) * PER_MILLION) for t in value.tiers), reverse=True)
        return (*tiers, (-1, float(value.base) * PER_MILLION))
    if isinstance(value, Decimal | int | float):
        return _flat(float(value))
    return fallback


def table_rates(model: str, base_url: str) -> Rates | None:
    """genai-prices' rates for ``model`` served from ``base_url`` (its provider found by URL, else by the model)."""
    snapshot = data_snapshot.get_snapshot()
    found = None
    for url in (base_url, None):
        try:
            found = snapshot.find_provider_model(model, None, None, url)
            break
        except LookupError:
            continue
    if found is None:
        return None
    prices = vars(found[1].get_prices(datetime.now(UTC)))
    input_rate = _rate(prices.get("input_mtok"), ())
    if not input_rate and "output_mtok" not in prices:
        return None  # priced per image, second or request: not by tokens
    return Rates(input_rate, _rate(prices.get("output_mtok"), ()), _rate(prices.get("cache_read_mtok"), input_rate),
                 _rate(prices.get("cache_write_mtok"), input_rate))  # fmt: skip


class Prices:
    """The rates in force for one config's ``pricing``; lookups are cached per (credential, upstream model)."""

    def __init__(self, overrides: Mapping[str, ModelPrice]) -> None:
        self.overrides = overrides
        self.globs = tuple((re.compile(translate(glob.lower())), override_rates(price))
                           for glob, price in overrides.items())  # fmt: skip
        self.cache: dict[tuple[str, str, str], Rates | None] = {}

    def rates(self, base_url: str, upstream_model: str, exposed_model: str) -> Rates | None:
        key = (base_url, upstream_model, exposed_model)
        try:
            return self.cache[key]
        except KeyError:
            pass
        if len(self.cache) >= _CACHE_LIMIT:
            self.cache.clear()
        found = self.cache[key] = self._lookup(base_url, upstream_model, exposed_model)
        return found

    def _lookup(self, base_url: str, upstream_model: str, exposed_model: str) -> Rates | None:
        names = (exposed_model.lower(), upstream_model.lower())
        for pattern, rates in self.globs:
            if any(pattern.fullmatch(name) for name in names):
                return rates
        return table_rates(upstream_model, base_url)
