"""The run's ledger: one budget for every paid call of a run (generation, batch, judge, ...).

Each call reserves its worst case (input estimate plus ``max_tokens`` at the stage's price)
before it is sent and settles its real usage when the answer arrives, so concurrent calls
of every stage together can never push spend over ``--max-cost`` or ``--max-tokens``. The
ledger also keeps the spend per stage that the progress display and the manifest show.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Reservation:
    stage: str
    price: ModelPrice | None
    discount: float
    cost_usd: float
    tokens: int


@dataclass
class Ledger:
    max_cost_usd: float | None = None
    max_tokens: int | None = None
    stages: dict[str, StageSpend] = field(default_factory=dict)
    reserved_usd: float = 0.0
    reserved_tokens: int = 0
    exhausted: bool = False  # a reservation was refused: every stage stops sending
    ray: dict[str, Any] = field(default_factory=dict)  # run --ray: the cluster and its workers

    @property
    def spent_usd(self) -> float:
        return sum(s.cost_usd for s in self.stages.values())

    @property
    def tokens(self) -> int:
        return sum(s.input_tokens + s.output_tokens for s in self.stages.values())

    def stage(self, name: str) -> StageSpend:
        return self.stages.setdefault(name, StageSpend())

    def reserve(self, stage: str, price: ModelPrice | None, input_tokens: int, max_output: int,
                *, discount: float = 1.0) -> Reservation | None:
        """Hold a call's worst case; None (and the ledger is exhausted) if it would cross a cap."""
        cost = price.cost(input_tokens, max_output) * discount if price else 0.0
        tokens = input_tokens + max_output
        over_cost = self.max_cost_usd is not None and (
            self.spent_usd + self.reserved_usd + cost > self.max_cost_usd + 1e-12)
        over_tokens = self.max_tokens is not None and (
            self.tokens + self.reserved_tokens + tokens > self.max_tokens)
        if self.exhausted or over_cost or over_tokens:
            self.exhausted = True
            return None
        self.reserved_usd += cost
        self.reserved_tokens += tokens
        return Reservation(stage, price, discount, cost, tokens)

    def release(self, r: Reservation) -> None:
        """The call ended (answered or not): its hold is lifted."""
        self.reserved_usd -= r.cost_usd
        self.reserved_tokens -= r.tokens

    def settle(self, r: Reservation, input_tokens: int, output_tokens: int) -> float:
        """Lift the hold and account what the call really used; return its cost."""
        self.release(r)
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
        by_stage = ", ".join(f"{k} ${v.cost_usd:.4f}" for k, v in self.stages.items())
        return BudgetExceeded(
            f"budget reached ({' / '.join(caps)}): spent ${self.spent_usd:.4f} this run"
            f"{f' ({by_stage})' if by_stage else ''}, {self.tokens:,} tokens; {done}/{total}"
            " jobs done. Everything received is stored"
            f"{f' and the outputs in {written} are written from it' if written else ''};"
            " raise the cap and run the same command again to continue."
        )

    def to_manifest(self) -> dict[str, Any]:
        return {"max_cost_usd": self.max_cost_usd, "max_tokens": self.max_tokens,
                "spent_usd": round(self.spent_usd, 6), "tokens": self.tokens,
                "stages": {k: v.to_dict() for k, v in self.stages.items()},
                **({"ray": self.ray} if self.ray else {})}
