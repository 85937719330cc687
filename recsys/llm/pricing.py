"""What LLM calls cost: USD per 1M input/output tokens per model, from a YAML table.

The packaged table is `prices.yaml` beside this module; `LLMConfig.price_table` replaces it. A model name resolves
exactly, then through the table's aliases, then by dropping a dated snapshot suffix ("gpt-4o-mini-2024-07-18" ->
"gpt-4o-mini", "gpt-3.5-turbo-0125" -> "gpt-3.5-turbo"). A fine-tuned model ("ft:<base>:<org>:<suffix>:<id>")
resolves as "ft:<base>", which the table prices apart (fine-tuned models cost more per token); a model's `training`
price is USD per 1M trained tokens of a fine-tuning job on it. Only date-like suffixes are dropped: "gpt-3.5-turbo-16k"
is priced differently from "gpt-3.5-turbo", so it is unknown rather than silently mispriced. An unknown model costs
None (logged once). `require_budget` refuses a run against a model with a price and no budget, unless it is told
that unbounded spend is intended.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

DEFAULT_PRICE_TABLE = Path(__file__).with_name("prices.yaml")
# "-2024-07-18", "-20240718", "-0613", "-0125": the dated snapshots OpenAI (and most gateways) name models with.
_SNAPSHOT = re.compile(r"^(?P<base>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")


BATCH_DISCOUNT = 0.5  # OpenAI's Batch API costs half the normal price; a table's batch_input/batch_output wins


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens, for normal requests and for the Batch API."""

    input_per_m: float
    output_per_m: float
    batch_input_per_m: float | None = None  # None: BATCH_DISCOUNT of the normal price
    batch_output_per_m: float | None = None
    training_per_m: float | None = None  # fine-tuning jobs on this model: USD per 1M trained tokens; None: unpriced

    def cost(self, prompt_tokens: int, completion_tokens: int, *, batch: bool = False) -> float:
        """USD for one call's tokens (at batch prices when `batch`)."""
        if batch:
            inp = self.batch_input_per_m if self.batch_input_per_m is not None else self.input_per_m * BATCH_DISCOUNT
            out = (self.batch_output_per_m if self.batch_output_per_m is not None
                   else self.output_per_m * BATCH_DISCOUNT)
            return (prompt_tokens * inp + completion_tokens * out) / 1_000_000
        return (prompt_tokens * self.input_per_m + completion_tokens * self.output_per_m) / 1_000_000


class PriceTable:
    """Model prices with alias and snapshot resolution; warns once per unknown model."""

    def __init__(self, models: dict[str, Price], aliases: dict[str, str] | None = None) -> None:
        self.models = dict(models)
        self.aliases = dict(aliases or {})
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_yaml(cls, path: str | Path) -> PriceTable:
        """Read `{models: {name: {input, output[, batch_input, batch_output, training]}}, aliases: {alias: name}}`."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        models: dict[str, Price] = {}
        for name, entry in (data.get("models") or {}).items():
            try:
                batch = [None if entry.get(k) is None else float(entry[k])
                         for k in ("batch_input", "batch_output", "training")]
                models[str(name)] = Price(float(entry["input"]), float(entry["output"]), *batch)
            except (TypeError, KeyError, ValueError) as exc:
                raise ValueError(f"{path}: model {name!r} needs numeric 'input' and 'output' prices") from exc
        aliases = {str(k): str(v) for k, v in (data.get("aliases") or {}).items()}
        for alias, target in aliases.items():
            if target not in models:
                raise ValueError(f"{path}: alias {alias!r} points at unknown model {target!r}")
        return cls(models, aliases)

    def resolve(self, model: str) -> str | None:
        """The table's name for `model`, or None when it is not priced."""
        name = model.strip()
        if name.startswith("ft:") and name.count(":") > 1:  # ft:<base>:<org>:<suffix>:<id> -> ft:<base>
            name = ":".join(name.split(":")[:2])
        for _ in range(3):  # exact, alias, snapshot-stripped (and its alias)
            if name in self.models:
                return name
            if name in self.aliases:
                return self.aliases[name]
            match = _SNAPSHOT.match(name)
            if not match:
                return None
            name = match.group("base")
        return None

    def price(self, model: str) -> Price | None:
        """The model's price, or None (with one warning per model) when unknown."""
        name = self.resolve(model)
        if name is not None:
            return self.models[name]
        with self._lock:
            if model not in self._warned:
                self._warned.add(model)
                log.warning("no price for model %r: its calls are recorded with cost None", model)
        return None

    def training_cost(self, model: str, trained_tokens: int) -> float | None:
        """USD of a fine-tuning job on `model` that trained `trained_tokens` tokens (epochs included); None when
        the table has no training price for it."""
        price = self.price(model)
        if price is None or price.training_per_m is None:
            return None
        return trained_tokens * price.training_per_m / 1_000_000

    def known(self, model: str) -> bool:
        """Whether `model` has a price (no warning)."""
        return self.resolve(model) is not None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int, *, cached: bool = False,
             batch: bool = False) -> float | None:
        """USD for one call (at batch prices when `batch`); 0.0 for an answer served from the cache; None for an
        unknown model."""
        if cached:
            return 0.0
        price = self.price(model)
        return None if price is None else price.cost(prompt_tokens, completion_tokens, batch=batch)


@lru_cache(maxsize=16)
def _load(path: str) -> PriceTable:
    return PriceTable.from_yaml(path)


def load_price_table(path: str | Path | None = None) -> PriceTable:
    """The price table at `path` (None: the packaged one); loaded once per path and process."""
    return _load(str(Path(path).resolve() if path is not None else DEFAULT_PRICE_TABLE))


def cost_usd(
    model: str, prompt_tokens: int, completion_tokens: int, *, cached: bool = False, table: str | Path | None = None
) -> float | None:
    """USD for one call by the table at `table` (None: packaged); None when the model has no price."""
    return load_price_table(table).cost(model, prompt_tokens, completion_tokens, cached=cached)


def price_known(model: str, table: str | Path | None = None) -> bool:
    """Whether `model` is priced, so that a run with a cost budget can refuse to start when it is not."""
    return load_price_table(table).known(model)


class UnboundedSpend(ValueError):
    """A run would call a paid model with no budget, and was not told that this is intended."""


def require_budget(model: str, max_cost_usd: float | None, allow_unbounded_spend: bool,
                   table: str | Path | None = None) -> None:
    """Refuse (UnboundedSpend) a run against `model` when the price table (`table`, None: packaged) gives it a
    non-zero price and the run has no budget, unless `allow_unbounded_spend`; ValueError for a budget <= 0.

    A free model (the local server's) and an unpriced one (a self-hosted model, whose calls the ledger counts
    as `unpriced`) need no budget: a budget could not count their spend anyway."""
    if max_cost_usd is not None:
        if max_cost_usd <= 0:
            raise ValueError(f"max_cost_usd must be > 0, got {max_cost_usd}")
        return
    prices = load_price_table(table)
    name = prices.resolve(model)
    price = prices.models[name] if name is not None else None
    if allow_unbounded_spend or price is None or (price.input_per_m == 0 and price.output_per_m == 0):
        return
    raise UnboundedSpend(
        f"model {model!r} costs ${price.input_per_m:g} / ${price.output_per_m:g} per 1M input / output tokens and "
        "this run has no budget: set max_cost_usd (`--max-cost-usd`), or allow_unbounded_spend "
        "(`--allow-unbounded-spend`) to run without one")
