"""The run's ledger: one budget for every paid call of a run (generation, batch, judge, ...).

Each call reserves its worst case (input bound plus ``max_tokens`` at the stage's price)
before it is sent and settles the usage the provider reports when the call ends, whatever
became of its text, so concurrent calls of every stage together can never push spend over
``--max-cost`` or ``--max-tokens``. The caps hold for the run directory: what earlier
invocations spent (``earlier_usd``, read from the store) counts against them.

Input is estimated in cl100k tokens, but a provider bills in its own tokenizer's: the
ledger learns each model's ratio of reported to estimated input from its answers and
reserves with the largest ratio seen (times a margin), and with ``UNKNOWN_INPUT_RATIO``
until it has one. Output is bounded by ``max_tokens`` in any tokenizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from textbook_gen.errors import BudgetExceeded
from textbook_gen.tokens import ModelPrice


@dataclass
class StageSpend:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "cost_usd": round(self.cost_usd, 6) if self.cost_known else None}


# Until a model's answers say how its tokenizer counts, input is reserved at this multiple
# of the cl100k estimate (Claude's tokenizer counts about 1.1-1.3x cl100k on English prose).
UNKNOWN_INPUT_RATIO = 1.6
# Once known, the largest ratio seen, with this margin for text that tokenizes worse.
RATIO_MARGIN = 1.15


@dataclass(frozen=True)
class Reservation:
    stage: str
    price: ModelPrice | None
    discount: float
    cost_usd: float
    tokens: int
    model: str = ""
    estimate: int = 0  # the cl100k estimate of the input, before the ratio


def money(usd: float | None) -> str:
    """Dollars for people; unknown (a model with no price) stays unknown, never $0."""
    return ("unknown (no price for this model; add one under prices:)" if usd is None
            else f"${usd:,.4f}")


@dataclass
class Ledger:
    max_cost_usd: float | None = None
    max_tokens: int | None = None
    stages: dict[str, StageSpend] = field(default_factory=dict)
    reserved_usd: float = 0.0
    reserved_tokens: int = 0
    exhausted: bool = False  # a reservation was refused: every stage stops sending
    ray: dict[str, Any] = field(default_factory=dict)  # run --ray: the cluster and its workers
    # what earlier invocations on the same run directory spent: the caps count it
    earlier_usd: float = 0.0
    earlier_tokens: int = 0
    ratios: dict[str, float] = field(default_factory=dict)  # model -> reported/estimated input

    @property
    def run_usd(self) -> float:
        """What this invocation spent."""
        return sum(s.cost_usd for s in self.stages.values())

    @property
    def spent_usd(self) -> float:
        """What the run directory has spent, earlier invocations included."""
        return self.earlier_usd + self.run_usd

    @property
    def cost_known(self) -> bool:
        return all(s.cost_known for s in self.stages.values())

    @property
    def run_tokens(self) -> int:
        return sum(s.input_tokens + s.output_tokens for s in self.stages.values())

    @property
    def tokens(self) -> int:
        return self.earlier_tokens + self.run_tokens

    def input_bound(self, model: str, estimate: int) -> int:
        """The most input tokens the provider can bill for a request estimated at
        ``estimate`` cl100k tokens."""
        ratio = self.ratios.get(model)
        return math.ceil(estimate * (ratio * RATIO_MARGIN if ratio else UNKNOWN_INPUT_RATIO))

    def expected_input(self, model: str, estimate: int) -> int:
        """Input tokens the provider will most likely count (what rate limits meter)."""
        return math.ceil(estimate * self.ratios.get(model, 1.0))

    def observe(self, model: str, estimate: int, reported: int) -> None:
        """Learn how the model's tokenizer counts from an answer's reported input."""
        if estimate > 0 and reported > 0:
            self.ratios[model] = max(self.ratios.get(model, 0.0), reported / estimate)

    def stage(self, name: str) -> StageSpend:
        return self.stages.setdefault(name, StageSpend())

    def reserve(self, stage: str, price: ModelPrice | None, input_tokens: int, max_output: int,
                *, discount: float = 1.0, model: str = "") -> Reservation | None:
        """Hold a call's worst case (``input_tokens``: the cl100k estimate, scaled here by
        what the model's tokenizer is known to count); None (and the ledger is exhausted) if
        it would cross a cap."""
        bound = self.input_bound(model, input_tokens)
        cost = price.cost(bound, max_output) * discount if price else 0.0
        tokens = bound + max_output
        over_cost = self.max_cost_usd is not None and (
            self.spent_usd + self.reserved_usd + cost > self.max_cost_usd + 1e-12)
        over_tokens = self.max_tokens is not None and (
            self.tokens + self.reserved_tokens + tokens > self.max_tokens)
        if self.exhausted or over_cost or over_tokens:
            self.exhausted = True
            return None
        self.reserved_usd += cost
        self.reserved_tokens += tokens
        return Reservation(stage, price, discount, cost, tokens, model, input_tokens)

    def release(self, r: Reservation) -> None:
        """The call ended and nothing was billed (it never reached the model): lift its hold."""
        self.reserved_usd -= r.cost_usd
        self.reserved_tokens -= r.tokens

    def settle(self, r: Reservation, input_tokens: int, output_tokens: int) -> float:
        """Lift the hold and account what the provider billed, whether or not the answer was
        usable; return its cost."""
        self.release(r)
        self.observe(r.model, r.estimate, input_tokens)
        return self.account(r.stage, r.price, input_tokens, output_tokens, discount=r.discount)

    def account(self, stage: str, price: ModelPrice | None, input_tokens: int, output_tokens: int,
                *, discount: float = 1.0) -> float:
        """Record usage that had no reservation (a batch submitted by an earlier run)."""
        s = self.stage(stage)
        cost = price.cost(input_tokens, output_tokens) * discount if price else 0.0
        s.requests += 1
        s.input_tokens += input_tokens
        s.output_tokens += output_tokens
        s.cost_usd += cost
        s.cost_known = s.cost_known and price is not None
        return cost

    def add(self, stage: str, spend: StageSpend) -> None:
        """Add what another ledger spent on a stage (a Ray worker's share)."""
        s = self.stage(stage)
        s.requests += spend.requests
        s.input_tokens += spend.input_tokens
        s.output_tokens += spend.output_tokens
        s.cost_usd += spend.cost_usd
        s.cost_known = s.cost_known and spend.cost_known

    def exceeded(self, done: int, total: int, written: Any = None) -> BudgetExceeded:
        """The error a run stops with; ``written``: the run directory whose outputs were
        written from what is stored before it stopped."""
        caps = []
        if self.max_cost_usd is not None:
            caps.append(f"--max-cost {self.max_cost_usd}")
        if self.max_tokens is not None:
            caps.append(f"--max-tokens {self.max_tokens}")
        by_stage = ", ".join(f"{k} {money(v.cost_usd if v.cost_known else None)}"
                             for k, v in self.stages.items())
        earlier = (f" ({money(self.earlier_usd)} by earlier runs of this directory, counted"
                   " against the cap)") if self.earlier_usd or self.earlier_tokens else ""
        return BudgetExceeded(
            f"budget reached ({' / '.join(caps)}): spent"
            f" {money(self.run_usd if self.cost_known else None)} this run"
            f"{f' ({by_stage})' if by_stage else ''}, {self.run_tokens:,} tokens{earlier};"
            f" {done}/{total}"
            " jobs done. Everything received is stored"
            f"{f' and the outputs in {written} are written from it' if written else ''};"
            " raise the cap and run the same command again to continue."
        )

    def to_manifest(self) -> dict[str, Any]:
        return {"max_cost_usd": self.max_cost_usd, "max_tokens": self.max_tokens,
                "spent_usd": round(self.run_usd, 6) if self.cost_known else None,
                "tokens": self.run_tokens,
                "earlier_usd": round(self.earlier_usd, 6), "earlier_tokens": self.earlier_tokens,
                "stages": {k: v.to_dict() for k, v in self.stages.items()},
                **({"ray": self.ray} if self.ray else {})}
