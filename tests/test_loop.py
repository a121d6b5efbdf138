"""The closed loop (textbook_gen/loop.py) against the loopback server: quotas of kept
documents, best-of-n, revision with the judge's critique, one budget, kill -9 and resume,
preference pairs.

The server answers deterministically and the judge's score depends on the document: every
generated page carries ``QUALITY=q`` (q from the request's seed; 1 for every "fractions"
page, so those cells can never fill), the judge reads it back as its score, and a revision
scores its draft's q + 2 or q - 1 depending on its own seed. The expected outcome of every
cell is computed here from the same rules, independently of the loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import stored_bodies
from fakeapi import FakeAPI, default_text
from sandbox_helpers import needs_bwrap

from textbook_gen.errors import BudgetExceeded, JudgeUnusable
from textbook_gen.expand import candidate_job, cells
from textbook_gen.providers.base import sent_seed
from textbook_gen.run import Overrides, apply_overrides, plan, run_curriculum
from textbook_gen.shards import iter_records, read_manifest
from textbook_gen.spec import load_curriculum
from textbook_gen.store import RunStore

LOOP_SPEC = """\
name: loopy
seed: 3
model: {provider: openai, name: gpt-4o-mini, max_tokens: 200}
audiences: [children, adults]
styles: [textbook]
subjects:
  - name: Numbers
    topics: [counting, fractions, decimals, percentages]
documents:
  - {kind: chapter, template: chapter.md.j2, per: [topic, audience], %s}
curation:
  min_tokens: 20
  judge: {enabled: true, min_score: %s}
%s
output: {format: jsonl, shard_max_records: 100}
"""


WIDE = {**os.environ, "COLUMNS": "250"}  # table rows on one line each


def _write(write_spec, doc: str, min_score: int = 3, curation: str = "", extra: str = ""):
    return write_spec(LOOP_SPEC % (doc, min_score, curation), extra=extra)


def quality(seed: int, prompt: str) -> int:
    if "fractions" in prompt:
        return 1
    return int(hashlib.sha256(str(seed).encode()).hexdigest(), 16) % 6


def revised(draft_q: int, seed: int) -> int:
    return min(5, draft_q + 2) if seed % 2 == 0 else max(0, draft_q - 1)


def responder(body):
    prompt = body["messages"][-1]["content"]
    seed = body.get("seed")
    if "Educational score" in prompt:  # the judge
        found = re.findall(r"QUALITY=(\d)", prompt)
        q = found[-1] if found else "none"
        return f"Critique: add a worked example (q{q}).\nEducational score: {q}"
    if "<critique>" in prompt:  # a revision
        draft = int(re.findall(r"QUALITY=(\d)", prompt)[-1])
        return default_text(f"rev{seed}") + f"\nQUALITY={revised(draft, seed)}\n"
    return default_text(f"gen{seed}") + f"\nQUALITY={quality(seed, prompt)}\n"


def _spec(path, url, **over):
    return apply_overrides(load_curriculum(path), Overrides(base_url=[f"{url}/v1"], **over))


def _kept(out):
    return {r["id"]: r for r in iter_records(out)}


def _rejects(out):
    return {r["id"]: r for r in iter_records(out, "rejects")}


def _is_judge(body):
    return "Educational score" in body["messages"][-1]["content"]


def _is_revision(body):
    return "<critique>" in body["messages"][-1]["content"]


# ----------------------------------------------------------------------------- quotas


def test_quotas_are_reached_exactly_where_possible_and_capped_where_not(api_env, write_spec,
                                                                        tmp_path):
    path = _write(write_spec, "target_kept: 2, max_samples: 4")
    with FakeAPI(responder=responder) as server:
        spec = _spec(path, server.url)
        result = run_curriculum(spec, out_dir=tmp_path / "o")
        bodies = server.generation_bodies()
    kept = _kept(tmp_path / "o")
    grid = {row["cell"]: row for row in result.manifest["coverage"]["grid"]}
    gave_up = {g["cell"]: g["reason"] for g in result.manifest["coverage"]["gave_up"]}
    expected_sent = 0
    for cell in cells(spec):
        jobs = [cell.job(n) for n in range(cell.cap)]
        passing = [j.id for j in jobs if quality(sent_seed(j.seed), "fractions" * ("fractions" in j.id)) >= 3]
        want = passing[:2]
        # the loop sends samples in order until two pass, or the cap
        sent = (jobs.index(next(j for j in jobs if j.id == want[1])) + 1
                if len(want) == 2 else cell.cap)
        expected_sent += sent
        mine = sorted(i for i in kept if i.startswith(cell.key + "/"))
        assert mine == sorted(want), cell.key
        assert grid[cell.key]["kept"] == len(want) and grid[cell.key]["samples"] == sent
        if len(want) < 2:
            assert "max_samples" in gave_up[cell.key]
        else:
            assert cell.key not in gave_up
    assert any("fractions" in c for c in gave_up)  # the cell no sample can fill gave up
    assert len(kept) == 2 * len(grid) - sum(2 - grid[c]["kept"] for c in gave_up)
    # every answer was sent and judged once, though every round curated all of them again
    assert sum(not _is_judge(b) for b in bodies) == expected_sent
    assert sum(_is_judge(b) for b in bodies) == expected_sent
    assert result.manifest["coverage"]["requests"] == expected_sent


def test_a_rerun_of_a_finished_loop_sends_nothing(api_env, write_spec, tmp_path):
    path = _write(write_spec, "target_kept: 2, max_samples: 4", curation="  revise: {below: 3}")
    with FakeAPI(responder=responder) as server:
        first = run_curriculum(_spec(path, server.url), out_dir=tmp_path / "o")
        sent = server.count()
        again = run_curriculum(_spec(path, server.url), out_dir=tmp_path / "o")
        assert server.count() == sent
    assert again.manifest["coverage"] == first.manifest["coverage"]
    assert again.stats.sent == 0


def test_raising_the_target_keeps_what_is_stored_and_pays_only_for_new_samples(
        api_env, write_spec, tmp_path):
    with FakeAPI(responder=responder) as server:
        run_curriculum(_spec(_write(write_spec, "target_kept: 1, max_samples: 4"), server.url),
                       out_dir=tmp_path / "o")
        first = {(json.dumps(b["messages"]), b.get("seed")) for b in server.generation_bodies()}
        before = _kept(tmp_path / "o")
        run_curriculum(_spec(_write(write_spec, "target_kept: 2, max_samples: 4"), server.url),
                       out_dir=tmp_path / "o")
        second = [(json.dumps(b["messages"]), b.get("seed"))
                  for b in server.generation_bodies()[len(first):]]
    assert not set(second) & first
    after = _kept(tmp_path / "o")
    assert set(before) <= set(after) and len(after) > len(before)


def test_over_target_survivors_are_rejected_with_the_reason_and_kept_in_the_store(tmp_path):
    from textbook_gen.curate.pipeline import LoopCuration, curate
    from textbook_gen.curate.settings import CurationSettings
    from textbook_gen.shards import Build

    def record(i, cell):
        text = default_text(f"t{i}")
        return {"id": f"{cell}/n{i}", "text": text, "quality": {},
                "provenance": {"loop": {"sample": f"{cell}/n{i}", "cell": cell, "target": 2,
                                        "n": i}}}

    records = [record(i, "a") for i in range(4)] + [record(i, "b") for i in range(4, 5)]
    settings = CurationSettings.model_validate({"min_tokens": 5, "check_structure": False})
    build = Build(tmp_path)
    result = curate(records, settings, build, fmt="jsonl", loop=LoopCuration())
    build.commit({"shards": [s.to_dict() for s in [*result.shards, *result.rejects]]})
    assert sorted(_kept(tmp_path)) == ["a/n0", "a/n1", "b/n4"]  # the earliest samples
    rejects = _rejects(tmp_path)
    assert {i: r["rejected"]["reason"] for i, r in rejects.items()} == {
        "a/n2": "over_target", "a/n3": "over_target"}
    assert result.cells == {"a": 4, "b": 1}  # survivors before the quota: what the loop reads


# ----------------------------------------------------------------------------- best-of-n


def test_best_of_n_keeps_the_highest_scoring_candidate_and_links_the_others(api_env,
                                                                           write_spec,
                                                                           tmp_path):
    path = _write(write_spec, "candidates: 3", min_score=0)
    with FakeAPI(responder=responder) as server:
        spec = _spec(path, server.url)
        run_curriculum(spec, out_dir=tmp_path / "o")
        bodies = server.generation_bodies()
    assert sum(not _is_judge(b) for b in bodies) == 8 * 3  # 8 cells x 1 sample x 3 answers
    kept, rejects = _kept(tmp_path / "o"), _rejects(tmp_path / "o")
    for cell in cells(spec):
        sample = cell.job(0)
        answers = [candidate_job(sample, k) for k in range(3)]
        scores = {j.id: quality(sent_seed(j.seed), "fractions" * ("fractions" in j.id)) for j in answers}
        chosen = [j.id for j in answers if j.id in kept]
        assert len(chosen) == 1, sample.id
        assert scores[chosen[0]] == max(scores.values())
        assert kept[chosen[0]]["quality"]["judge_score"] == max(scores.values())
        for j in answers:
            if j.id != chosen[0]:
                why = rejects[j.id]["rejected"]
                assert why["reason"] == "not_selected" and why["chosen"] == chosen[0]
        # the candidates answered one prompt, with distinct seeds
        sent = [b for b in bodies if not _is_judge(b) and b.get("seed") in
                {sent_seed(j.seed) for j in answers}]
        assert len({json.dumps(b["messages"]) for b in sent}) == 1 and len(sent) == 3


# ----------------------------------------------------------------------------- revision


@pytest.mark.parametrize("doc", ["samples: 1", "target_kept: 1, max_samples: 1"])
def test_a_revision_replaces_its_draft_only_when_it_scores_higher(api_env, write_spec,
                                                                 tmp_path, doc):
    # min_score 1 < below 3: kept drafts under 3 are revised too (in a full cell, the
    # revision can only replace its own draft)
    path = _write(write_spec, doc, min_score=1, curation="  revise: {below: 3, rounds: 1}")
    with FakeAPI(responder=responder) as server:
        spec = _spec(path, server.url)
        run_curriculum(spec, out_dir=tmp_path / "o")
        bodies = server.generation_bodies()
    kept, rejects = _kept(tmp_path / "o"), _rejects(tmp_path / "o")
    everything = {**kept, **rejects}
    revisions = 0
    for cell in cells(spec):
        draft = cell.job(0)
        q = quality(sent_seed(draft.seed), "fractions" * ("fractions" in draft.id))
        rev_id = f"{draft.id}/r1"
        if q >= 3:
            assert rev_id not in everything  # good enough: not sent back
            assert draft.id in kept
            continue
        revisions += 1
        rev = everything[rev_id]
        q2 = rev["quality"]["judge_score"]
        assert q2 == revised(q, rev["provenance"]["seed"])
        chain = rev["provenance"]["loop"]
        assert chain["revision_of"] == draft.id and chain["draft_score"] == q
        assert f"(q{q})" in chain["critique"]  # the judge's critique went back to the writer
        best = rev_id if q2 > q else draft.id
        if max(q, q2) >= 1:
            assert best in kept and ({draft.id, rev_id} - {best}).isdisjoint(kept)
        else:
            assert draft.id not in kept and rev_id not in kept
    assert revisions > 0 and sum(_is_revision(b) for b in bodies) == revisions
    # the revision prompt carried the draft and the critique
    one = next(b for b in bodies if _is_revision(b))["messages"][-1]["content"]
    assert "QUALITY=" in one and "add a worked example" in one


# ----------------------------------------------------------------------------- money


def test_the_budget_holds_across_generation_judge_and_revision(api_env, write_spec, tmp_path):
    path = _write(write_spec, "target_kept: 2, max_samples: 6", min_score=3,
                  curation="  revise: {below: 3, rounds: 2}", extra="engine: {concurrency: 2}\n")
    with FakeAPI(responder=responder) as server:
        p = plan(_spec(path, server.url), out_dir=tmp_path / "plan")
        low, high = p.total_cost(1.0), p.most.cost(1.0)
        assert high > low > 0
        whole = run_curriculum(_spec(path, server.url), out_dir=tmp_path / "whole")
        spent = whole.ledger.spent_usd
        cap = spent * 0.9  # the first round fits; the loop's later rounds do not
        assert cap < spent < high
        server.requests.clear()
        with pytest.raises(BudgetExceeded, match="outputs"):
            run_curriculum(_spec(path, server.url, max_cost_usd=cap), out_dir=tmp_path / "o")
        bodies = server.generation_bodies()
    with RunStore(tmp_path / "o" / "run.sqlite") as store:
        assert store.totals()["cost_usd"] <= cap  # overshoot zero, every stage included
    manifest = read_manifest(tmp_path / "o")  # what was paid for is curated and written
    assert manifest["this_run"]["spent_usd"] <= cap
    assert manifest["coverage"]["short"] > 0
    assert any(g["reason"] == "the budget ran out" for g in manifest["coverage"]["gave_up"])
    assert any(_is_revision(b) for b in bodies) and any(_is_judge(b) for b in bodies)


def test_plan_shows_one_pass_and_every_cap(api_env, write_spec, tmp_path):
    path = _write(write_spec, "target_kept: 2, max_samples: 6, candidates: 2",
                  curation="  revise: {below: 3, rounds: 1}")
    p = plan(load_curriculum(path), out_dir=tmp_path / "o")
    assert p.jobs == 8 * 2 * 2  # one pass: target samples x candidates per cell
    assert p.most is not None
    assert p.most.requests == 8 * 6 * 2 and p.most.revisions == 8 * 6
    assert p.most.judge is not None and p.most.judge.requests == 8 * 6 * 2 + 8 * 6
    assert p.most.cost(1.0) > p.total_cost(1.0) * 3
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "plan", str(path), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=60,
                          env=WIDE)
    assert proc.returncode == 0, proc.stderr
    assert "(one pass) .." in proc.stdout and "(every cap reached)" in proc.stdout


# ----------------------------------------------------------------------------- the judge


def test_a_judge_that_gives_no_scores_stops_the_run_plainly(api_env, write_spec, tmp_path):
    path = _write(write_spec, "samples: 1")

    def no_scores(body):
        return "I like it." if _is_judge(body) else None

    with FakeAPI(responder=no_scores) as server, pytest.raises(JudgeUnusable,
                                                               match="cannot judge"):
        run_curriculum(_spec(path, server.url), out_dir=tmp_path / "o")


def test_the_bundled_local_model_is_refused_as_judge_in_plan_and_run(write_spec, tmp_path):
    path = write_spec(LOOP_SPEC.replace("{provider: openai, name: gpt-4o-mini, max_tokens: 200}",
                                        "{max_tokens: 200}") % ("samples: 1", 3, ""))
    planned = subprocess.run([sys.executable, "-m", "textbook_gen", "plan", str(path),
                              "--out", str(tmp_path / "o")],
                             capture_output=True, text=True, timeout=60, env=WIDE)
    assert planned.returncode == 0 and "cannot judge" in planned.stdout
    ran = subprocess.run([sys.executable, "-m", "textbook_gen", "run", str(path), "--out",
                          str(tmp_path / "o"), "--quiet"], capture_output=True, text=True,
                         timeout=60)
    assert ran.returncode == 2 and "cannot judge" in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr
    assert not (tmp_path / "o" / "run.sqlite").exists()  # refused before anything ran


# ----------------------------------------------------------------------------- kill -9


def _start(spec, out, url):
    env = {**os.environ, "OPENAI_API_KEY": "sk-test", "TEXTBOOK_GEN_RETRY_BASE_DELAY": "0.01"}
    return subprocess.Popen(
        [sys.executable, "-m", "textbook_gen", "run", str(spec), "--out", str(out),
         "--base-url", f"{url}/v1", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _identity(body):
    return json.dumps([body["messages"], body.get("seed")], sort_keys=True)


def _stored(out):
    return {json.dumps([[{"role": m["role"], "content": m["content"]} for m in body["messages"]],
                        body["params"].get("seed")], sort_keys=True)
            for body in stored_bodies(out)}


def test_kill_9_mid_loop_then_rerun_resends_nothing_stored_and_ends_the_same(write_spec,
                                                                             tmp_path):
    path = _write(write_spec, "target_kept: 2, max_samples: 5, candidates: 2",
                  curation="  revise: {below: 3, rounds: 1}", extra="engine: {concurrency: 3}\n")
    with FakeAPI(responder=responder) as server:
        clean = _start(path, tmp_path / "clean", server.url)
        assert clean.wait(timeout=300) == 0, clean.stderr.read()
        total = server.count()
    with FakeAPI(responder=responder, latency=0.05) as server:
        proc = _start(path, tmp_path / "o", server.url)
        deadline = time.monotonic() + 120
        while server.count() < total * 2 // 3 and time.monotonic() < deadline:
            time.sleep(0.02)  # past the first round (2/3 of all requests): mid-loop
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        before = len(server.generation_bodies())
        stored = _stored(tmp_path / "o")
        assert 0 < len(stored) < total
        again = _start(path, tmp_path / "o", server.url)
        assert again.wait(timeout=300) == 0, again.stderr.read()
        resent = [_identity(b) for b in server.generation_bodies()[before:]]
    assert not set(resent) & stored  # nothing stored is sent again
    same = lambda out: sorted((r["id"], r["text"]) for r in iter_records(out))  # noqa: E731
    assert same(tmp_path / "o") == same(tmp_path / "clean")


# ----------------------------------------------------------------------------- pairs


def test_pairs_are_valid_and_link_real_records(api_env, write_spec, tmp_path):
    path = _write(write_spec, "samples: 1, candidates: 3", min_score=1,
                  curation="  revise: {below: 3, rounds: 1}")
    with FakeAPI(responder=responder) as server:
        run_curriculum(_spec(path, server.url), out_dir=tmp_path / "o")
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "cat", str(tmp_path / "o"),
                           "--pairs"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    pairs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert pairs
    everything = {**_kept(tmp_path / "o"), **_rejects(tmp_path / "o")}
    with RunStore(tmp_path / "o" / "run.sqlite") as store:
        for p in pairs:
            assert set(p) >= {"prompt", "chosen", "rejected", "scores"}
            win, lose = everything[p["chosen_id"]], everything[p["rejected_id"]]
            assert p["chosen"] == win["text"] and p["rejected"] == lose["text"]
            assert p["scores"] == {"chosen": win["quality"]["judge_score"],
                                   "rejected": lose["quality"]["judge_score"]}
            assert p["scores"]["chosen"] > p["scores"]["rejected"]
            loop_w, loop_l = win["provenance"]["loop"], lose["provenance"]["loop"]
            assert loop_w["sample"] == loop_l["sample"]  # answers to the same prompt
            task = store.get_request(loop_w["task_sha256"])
            assert p["prompt"] == dict(task.messages)["user"]
            assert "Write" in p["prompt"] or p["prompt"]
    assert any(everything[p["chosen_id"]]["provenance"]["loop"]["revision"] for p in pairs) \
        or any(everything[p["rejected_id"]]["rejected"]["reason"] == "not_selected"
               for p in pairs)


def test_stats_and_report_show_targets_and_the_cells_that_gave_up(api_env, write_spec,
                                                                  tmp_path):
    path = _write(write_spec, "target_kept: 2, max_samples: 3")
    with FakeAPI(responder=responder) as server:
        result = run_curriculum(_spec(path, server.url), out_dir=tmp_path / "o")
    cov = result.manifest["coverage"]
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "stats", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, env=WIDE)
    assert proc.returncode == 0, proc.stderr
    assert f"closed loop: {cov['target_met']} of {cov['cells']} cells at target" in proc.stdout
    assert "of 2" in proc.stdout  # each place and kind against its target
    short = [g for g in cov["gave_up"] if "fractions" in g["cell"]]
    assert short and all(f"short: {g['cell']}" in proc.stdout for g in short)
    from textbook_gen.report import _coverage
    from textbook_gen.stats import corpus_stats

    html = _coverage(corpus_stats(tmp_path / "o"))
    assert "of the target (target_kept)" in html
    assert re.search(r"<th>fractions</th><td class='num empty'>0 / \d+ of 4</td>", html)


@pytest.mark.parametrize("doc, curation, message", [
    ("samples: 2, target_kept: 1", "", "give samples"),
    ("target_kept: 3, max_samples: 2", "", "max_samples (2) is under target_kept (3)"),
    ("max_samples: 2", "", "set target_kept too"),
    ("candidates: 0", "", "candidates"),
    ("samples: 1", "  revise: {below: 3}\n  judge: {enabled: false}", "turn the judge on"),
])
def test_loop_settings_that_cannot_work_are_one_message_with_the_line(write_spec, doc,
                                                                      curation, message):
    from textbook_gen.errors import SpecError

    text = LOOP_SPEC % (doc, 3, curation)
    if "judge: {enabled: false}" in curation:
        text = text.replace("  judge: {enabled: true, min_score: 3}\n", "")
    path = write_spec(text)
    with pytest.raises(SpecError) as e:
        load_curriculum(path)
    assert message in str(e.value) and f"{path}:" in str(e.value)


def test_a_broken_revise_template_is_found_before_anything_is_paid(api_env, write_spec,
                                                                   tmp_path):
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "revise.md.j2").write_text("Fix this:\n{{ draft }}\n{{ critiqe }}\n")
    path = _write(write_spec, "samples: 1", curation="  revise: {below: 3}",
                  extra="templates: tpl\n")
    proc = subprocess.run([sys.executable, "-m", "textbook_gen", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "revise.md.j2:3" in proc.stderr and "critiqe" in proc.stderr


def test_among_equal_scores_the_candidate_least_like_its_cell_is_chosen(tmp_path):
    from textbook_gen.curate.pipeline import LoopCuration, curate
    from textbook_gen.curate.settings import CurationSettings
    from textbook_gen.shards import Build

    first = default_text("first")
    twin = first.replace("\n\n", "\n\nIndeed, ", 1)  # nearly the cell's first document
    other = default_text("other")

    def record(rid, sample, n, text):
        return {"id": rid, "text": text, "quality": {},
                "provenance": {"loop": {"sample": sample, "cell": "c", "n": n, "target": 2}}}

    records = [record("c/n0", "c/n0", 0, first),
               record("c/n1", "c/n1", 1, twin), record("c/n1/c1", "c/n1", 1, other)]
    settings = CurationSettings.model_validate({"min_tokens": 5, "check_structure": False,
                                                "judge": {"enabled": True, "min_score": 1},
                                                "dedup": {"near": False}})
    build = Build(tmp_path)
    result = curate(records, settings, build, fmt="jsonl", loop=LoopCuration(),
                    judge=lambda rs: {r["id"]: 4.0 for r in rs})
    build.commit({"shards": [s.to_dict() for s in [*result.shards, *result.rejects]]})
    assert sorted(_kept(tmp_path)) == ["c/n0", "c/n1/c1"]
    why = _rejects(tmp_path)["c/n1"]["rejected"]
    assert why["reason"] == "not_selected" and why["chosen"] == "c/n1/c1"


def test_the_loop_in_batch_mode_keeps_what_it_keeps_with_direct_requests(api_env, write_spec,
                                                                           tmp_path):
    """Each round's new samples go out as one batch (at half price) and the loop ends with
    the same kept documents, grid and requests as with direct calls."""
    path = _write(write_spec, "target_kept: 2, max_samples: 4")
    with FakeAPI(responder=responder) as server:
        direct = run_curriculum(_spec(path, server.url), out_dir=tmp_path / "direct")
        sent_direct = sorted((json.dumps(b["messages"]), b.get("seed"))
                             for b in server.generation_bodies() if not _is_judge(b))
    with FakeAPI(responder=responder, batch_complete_after=0.05) as server:
        batched = run_curriculum(_spec(path, server.url), out_dir=tmp_path / "batch",
                                 batch=True, poll_interval=0.05)
        lines = [item["body"] for b in server._oa_batches.values() for item in b["lines"]]
        direct_generations = [b for b in server.generation_bodies() if not _is_judge(b)]
        rounds = len(server._oa_batches)
    assert sorted(_kept(tmp_path / "batch")) == sorted(_kept(tmp_path / "direct"))
    assert batched.manifest["coverage"]["grid"] == direct.manifest["coverage"]["grid"]
    # every sample went out once, in a batch, and they were the samples direct mode sent
    assert not direct_generations
    generations = [b for b in lines if not _is_judge(b)]
    assert sorted((json.dumps(b["messages"]), b.get("seed")) for b in generations) == sent_direct
    assert rounds >= 2  # the loop needed more than one round, each its own batch
    records = list(iter_records(tmp_path / "batch"))
    assert all(r["provenance"]["batch_id"] for r in records)


def _with_exercise(body):
    """The loop's responder, with a passing exercise that names its request on every page."""
    text = responder(body)
    if _is_judge(body) or "<critique>" in body["messages"][-1]["content"]:
        return text
    return (text + f"\n## Exercise 1\nWrite add.\n\n### Solution\n```python\n"
            f"def add(a, b):  # page {body.get('seed')}\n    return a + b\n```\n\n### Tests\n"
            "```python\nassert add(2, 3) == 5\n```\n")


@needs_bwrap
def test_each_pages_exercises_run_once_though_every_round_curates_it_again(
        api_env, write_spec, tmp_path, monkeypatch):
    import threading
    from collections import Counter

    from textbook_gen.curate import verify

    checked: Counter[str] = Counter()
    lock = threading.Lock()

    def counting(ex, s):
        with lock:
            checked[ex.solution_code] += 1
        return verify.check_python(ex, s)

    monkeypatch.setitem(verify._CHECKERS, "python", counting)
    path = _write(write_spec, "target_kept: 2, max_samples: 4")
    with FakeAPI(responder=_with_exercise) as server:
        result = run_curriculum(_spec(path, server.url), out_dir=tmp_path / "o")
        pages = [b for b in server.generation_bodies() if not _is_judge(b)]
    kept = list(iter_records(tmp_path / "o"))
    assert kept and all(r["quality"]["verified"] for r in kept)
    # cells that sent more samples than their target needed a later round, which curated
    # the answers of round 1 again
    assert any(row["samples"] > row["target"] for row in result.manifest["coverage"]["grid"])
    assert len(checked) == len(pages)  # every page's exercise was checked ...
    assert set(checked.values()) == {1}  # ... once
