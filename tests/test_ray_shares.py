"""`run --ray`'s shares of concurrency, rate limits and budget: they sum to the whole.
(Pure arithmetic and the rate limiter; tests/test_ray_run.py runs a real cluster.)"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from conftest import SMALL_SPEC

from textbook_gen.distributed_run import _share, budget_parts, worker_count
from textbook_gen.errors import ConfigError
from textbook_gen.ledger import Ledger
from textbook_gen.ratelimit import RateLimiter
from textbook_gen.spec import load_curriculum


def _spec(write_spec, engine):
    return load_curriculum(write_spec(SMALL_SPEC + f"engine: {engine}\n"))


def test_more_workers_than_concurrency_are_capped_and_the_shares_sum_to_the_limits(write_spec):
    spec = _spec(write_spec, "{concurrency: 8, rpm: 10, tpm: 100003}")
    n, note = worker_count(spec, 32)
    assert n == 8 and note is not None and "engine.concurrency is 8" in note
    shares = [_share(spec, n, k).engine for k in range(n)]
    assert sum(e.concurrency for e in shares) == 8
    assert sum(e.rpm for e in shares) == 10
    assert sum(e.tpm for e in shares) == 100003
    assert min(min(e.concurrency, e.rpm) for e in shares) >= 1
    assert all(e.max_cost_usd is None and e.max_total_tokens is None for e in shares)


def test_a_remainder_is_spread_one_each_over_the_first_workers(write_spec):
    spec = _spec(write_spec, "{concurrency: 12, rpm: 10}")
    assert worker_count(spec, 3) == (3, None)
    assert [_share(spec, 3, k).engine.rpm for k in range(3)] == [4, 3, 3]
    assert [_share(spec, 3, k).engine.concurrency for k in range(3)] == [4, 4, 4]
    assert worker_count(spec, 11)[0] == 10  # rpm is the smallest limit here


def test_budget_parts_never_sum_to_more_than_what_is_left():
    ledger = Ledger(0.1, 10)
    ledger.account("generate", None, 0, 0)
    for n in (1, 3, 7, 29):
        parts = budget_parts(ledger, n)
        assert len(parts) == n
        assert sum(t for _, t in parts) == 10
        assert math.fsum(c for c, _ in parts) <= 0.1
        assert Fraction(parts[0][0]) * n <= Fraction(0.1) and parts[0][0] > 0.1 / n - 1e-15
    assert budget_parts(Ledger(None, None), 2) == [(None, None), (None, None)]


def test_reported_limits_are_split_so_the_workers_parts_sum_to_at_most_the_limit():
    limiters = [RateLimiter(share=3) for _ in range(3)]
    for limiter in limiters:
        limiter.tighten(rpm=10, tpm=1000)
    assert sum(x.requests.limit for x in limiters) <= 10
    assert sum(x.tokens.limit for x in limiters) <= 1000
    alone = RateLimiter()
    alone.tighten(rpm=1)
    assert alone.requests.limit == 1


def test_a_reported_limit_smaller_than_the_workers_stops_the_run_with_what_to_do():
    with pytest.raises(ConfigError, match="limit of 2 requests a minute.*--workers 2 or fewer"):
        RateLimiter(share=3).tighten(rpm=2)
