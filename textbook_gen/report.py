"""``textbook-gen report``: one self-contained ``report.html`` for a run directory.

Everything is inline, so the page opens offline and makes no network request. Charts are
plotly figures, interactive without a server: plotly.js is carried once, gzipped and in
base64 (1.9 MB instead of 4.8), and the page unpacks it with the browser's
``DecompressionStream``; each chart is only its traces and layout as JSON (no template), drawn
once the library is loaded. Example texts are trimmed. The figures come from
``stats.corpus_stats``; spend and throughput over time from the run store when there is one.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import gzip
import html
import sqlite3
from pathlib import Path
from typing import Any

from textbook_gen import __version__
from textbook_gen.stats import CorpusStats, corpus_stats

CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem}
th{background:#f4f4f4;text-align:left}td.num{text-align:right}td.empty{background:#fde2e2}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1rem}.muted{color:#777}
pre{white-space:pre-wrap;background:#f8f8f8;padding:.5rem;font-size:.85rem;max-height:14rem;
overflow:auto}
"""


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    s = corpus_stats(run_dir)
    parts = [_header(run_dir, s), _coverage(s), _charts(s), _rejections(s), _diversity(s),
             _spend(run_dir), _provenance(s)]
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>textbook-gen report: {html.escape(str(run_dir))}</title>"
            f"<style>{CSS}</style></head><body>"
            + "".join(parts) + _library() + "</body></html>")
    out = run_dir / "report.html"
    tmp = out.with_name(".report.html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


# unpack plotly.js, run it, then draw every chart from its JSON; an error shows on the page
LOADER = """<script>(async () => {
  try {
    const packed = atob(document.getElementById("plotly-js-gz").textContent.trim());
    const bytes = Uint8Array.from(packed, c => c.charCodeAt(0));
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    const lib = document.createElement("script");
    lib.textContent = await new Response(stream).text();
    document.head.appendChild(lib);
    for (const spec of document.querySelectorAll("script[data-chart]")) {
      const fig = JSON.parse(spec.textContent);
      Plotly.newPlot(spec.dataset.chart, fig.data, fig.layout, {displaylogo: false});
    }
  } catch (e) {
    document.body.insertAdjacentHTML("afterbegin",
      "<p class='muted'>Charts need a browser with DecompressionStream: " + e + "</p>");
  }
})();</script>"""
EXAMPLE_CHARS = 300  # of a rejected document's text, and of its reason's detail
CLUSTER_CHARS = 200  # of each near-duplicate shown


@functools.lru_cache(maxsize=1)
def _plotly_gz() -> str:
    from plotly.offline import get_plotlyjs

    return base64.b64encode(gzip.compress(get_plotlyjs().encode("utf-8"), 9, mtime=0)).decode()


def _library() -> str:
    return (f"<script type='application/octet-stream' id='plotly-js-gz'>{_plotly_gz()}"
            f"</script>{LOADER}")


def _figure(fig: Any, div_id: str) -> str:
    """A chart's place and its figure as JSON: traces and layout, no template (plotly.js's own
    defaults draw it), so a chart weighs what its data weighs."""
    fig.update_layout(margin={"l": 40, "r": 10, "t": 40, "b": 40}, height=320, template="none")
    spec = str(fig.to_json()).replace("</", "<\\/")  # JSON inside <script> must not close it
    return (f"<div id='{div_id}' class='chart' style='height:320px'></div>"
            f"<script type='application/json' data-chart='{div_id}'>{spec}</script>")


def _header(run_dir: Path, s: CorpusStats) -> str:
    failed = (s.manifest.get("counts") or {}).get("failed", 0)
    return (f"<h1>{html.escape(str(s.manifest.get('name') or run_dir.name))}</h1>"
            f"<p class='muted'>{html.escape(str(run_dir))} · report of"
            f" {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC</p>"
            f"<p><b>{s.kept:,} kept</b>, {s.rejected:,} rejected, {failed:,} failed jobs.</p>")


def _coverage(s: CorpusStats) -> str:
    kinds = sorted({k for _, k in s.coverage})
    targets = s.targets
    rows = []
    for place in sorted({p for p, _ in s.coverage}):
        cells = []
        for k in kinds:
            c = s.coverage.get((place, k))
            if not c:
                cells.append("<td></td>")
                continue
            total = c["kept"] + c["rejected"]
            target = targets.get((place, k))
            short = c["kept"] < target if target is not None else c["kept"] == 0
            of = f" of {target}" if target is not None else ""
            cls = "num empty" if short else "num"
            cells.append(f"<td class='{cls}'>{c['kept']} / {total}{of}</td>")
        rows.append(f"<tr><th>{html.escape(place)}</th>{''.join(cells)}</tr>")
    head = "".join(f"<th>{html.escape(k)}</th>" for k in kinds)
    what = ("kept / produced of the target (target_kept) per place and kind; cells short of"
            " their target are red." if targets else
            "kept / produced per place and kind; cells where nothing survived are red.")
    return (f"<h2>Coverage</h2><p class='muted'>{what}</p>"
            f"<table id='coverage'><tr><th>place</th>{head}</tr>{''.join(rows)}</table>")


def _charts(s: CorpusStats) -> str:
    import plotly.graph_objects as go

    out = ["<h2>Quality</h2><div class='grid'>"]
    if s.tokens_by_kind:
        tokens = go.Figure([go.Bar(name=k, x=sorted(c), y=[c[b] for b in sorted(c)])
                            for k, c in sorted(s.tokens_by_kind.items())])
        tokens.update_layout(title="length of kept documents (tokens, 50-token bins)",
                             barmode="group")
        out.append(_figure(tokens, "chart-tokens"))
    else:
        out.append("<p class='muted'>No kept document with a token count.</p>")
    if s.judge_by_kind:
        judge = go.Figure([go.Bar(name=k, x=sorted(c), y=[c[b] for b in sorted(c)])
                           for k, c in sorted(s.judge_by_kind.items())])
        judge.update_layout(title="judge scores (0-5)", barmode="group")
        out.append(_figure(judge, "chart-judge"))
    else:
        out.append("<p class='muted'>No judge scores: the judge was off.</p>")
    out.append("</div>")
    if s.verified:
        out.append("<p>Exercises: " + ", ".join(f"{html.escape(k)} {v:,}"
                                                 for k, v in s.verified.items()) + "</p>")
    return "".join(out)


def _rejections(s: CorpusStats) -> str:
    if not s.reasons:
        return "<h2>Rejections</h2><p>None.</p>"
    import plotly.graph_objects as go

    reasons = s.reasons.most_common()
    fig = go.Figure(go.Bar(x=[n for _, n in reasons][::-1], y=[r for r, _ in reasons][::-1],
                           orientation="h"))
    fig.update_layout(title="rejected documents by stage and reason")
    out = ["<h2>Rejections</h2>", _figure(fig, "chart-reasons")]
    for reason, n in reasons:
        out.append(f"<h3>{html.escape(reason)} ({n:,})</h3><div class='grid'>")
        for ex in s.reason_examples.get(reason, []):
            out.append(f"<div><b>{html.escape(str(ex['id']))}</b>"
                       f"<pre>{html.escape(_trim(ex['detail'], EXAMPLE_CHARS))}</pre>"
                       f"<pre>{html.escape(_trim(ex['text'], EXAMPLE_CHARS))}</pre></div>")
        out.append("</div>")
    return "".join(out)


def _trim(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:chars].rstrip() + " …"


def _diversity(s: CorpusStats) -> str:
    if not s.diversity:
        return "<h2>Diversity</h2><p>No kept documents to measure.</p>"
    rows = "".join(
        f"<tr><th>{html.escape(d.kind)} ({d.documents:,})</th>"
        f"<td class='num'>{d.compression.ratio:.3f} [{d.compression.sample:,}]</td>"
        f"<td class='num'>{d.ngram_diversity.score:.3f} [{d.ngram_diversity.sample:,}]</td>"
        f"<td class='num'>{d.self_repetition.score:.3f} [{d.self_repetition.sample:,}]</td>"
        f"<td class='num'>{d.homogenization.score:.3f} [{d.homogenization.sample:,}]</td></tr>"
        for d in s.diversity)
    out = ["<h2>Diversity</h2><p class='muted'>Per kind of kept document; sample sizes in"
           " brackets. Published figures: Shaib et al. 2024, \"Standardizing the measurement of"
           " text diversity\", as their <code>diversity</code> package computes them"
           " (whitespace tokens, counted across the corpus; homogenization is its ROUGE-L"
           " variant on a seeded sample).</p><table id='published'><tr><th>kind</th>"
           "<th>compression_ratio</th><th>ngram_diversity_score (n&le;4)</th>"
           "<th>self_repetition_score</th><th>homogenization_rougel</th></tr>"
           f"{rows}</table><p class='muted'>Ours (lower-cased words, punctuation dropped,"
           " n-grams within documents; not comparable with a paper's figures): openings,"
           " word distinct-n, near-duplicates.</p>"]
    for d in s.diversity:
        dv = d.distinct.values
        openings = "".join(f"<tr><td>{html.escape(o)}</td><td class='num'>{n:,}</td>"
                           f"<td class='num'>{n / max(d.openings.sample, 1):.0%}</td></tr>"
                           for o, n in d.openings.top[:10])
        clusters = "".join(
            f"<div><b>{len(c)} documents</b>" + "".join(
                f"<pre>{html.escape(_trim(t, CLUSTER_CHARS))}</pre>" for t in ex) + "</div>"
            for c, ex in zip(d.near_duplicates.clusters, d.cluster_examples, strict=False)
        ) or "<p>No near-duplicates in the sample.</p>"
        out.append(
            f"<h3>{html.escape(d.kind)} ({d.documents:,} documents)</h3>"
            f"<p>word distinct-1/2/3/4: {dv[1]:.2f} / {dv[2]:.2f} / {dv[3]:.2f} / {dv[4]:.2f}"
            f" [{d.distinct.sample:,}] · near-duplicates {d.near_duplicates.rate:.1%}"
            f" [{d.near_duplicates.sample:,}]</p>"
            f"<div class='grid'><div><b>most common openings</b> [{d.openings.sample:,}]"
            f"<table class='openings'><tr><th>opening</th><th>documents</th><th>share</th></tr>"
            f"{openings}</table></div><div><b>largest near-duplicate clusters</b>{clusters}"
            "</div></div>")
    if s.readability:
        out.append("<p>Readability (Flesch-Kincaid grade) per audience: " + ", ".join(
            f"{html.escape(a)} {r.grade:.1f} [{r.sample}]" for a, r in s.readability.items())
            + "</p>")
    return "".join(out)


def _spend(run_dir: Path) -> str:
    store = run_dir / "run.sqlite"
    if not store.exists():
        return "<h2>Spend</h2><p class='muted'>No run store here (a curate output).</p>"
    import plotly.graph_objects as go

    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        try:  # billed failures count too; a store from before 004_cost_known knows every cost
            rows = db.execute("SELECT created_at, cost_usd, output_tokens, cost_known FROM"
                              " responses WHERE status = 'ok' OR cost_usd > 0"
                              " ORDER BY created_at").fetchall()
        except sqlite3.OperationalError:
            rows = db.execute("SELECT created_at, cost_usd, output_tokens, 1 FROM responses"
                              " WHERE status = 'ok' ORDER BY created_at").fetchall()
    finally:
        db.close()
    if not rows:
        return "<h2>Spend</h2><p>No answers stored.</p>"
    times = [dt.datetime.fromtimestamp(t, dt.UTC) for t, _, _, _ in rows]
    cost, tokens, c, k = [], [], 0.0, 0
    known = all(r[3] for r in rows)
    for _, usd, out_tokens, _ in rows:
        c += usd
        k += out_tokens
        cost.append(c)
        tokens.append(k)
    spend = go.Figure(go.Scatter(x=times, y=cost, mode="lines"))
    spend.update_layout(title=f"cumulative spend (USD): ${c:.4f}" if known else
                        "cumulative spend: unknown (a model without a price; add prices:)")
    made = go.Figure(go.Scatter(x=times, y=tokens, mode="lines"))
    made.update_layout(title=f"cumulative output tokens: {k:,}")
    return ("<h2>Spend and throughput</h2><div class='grid'>" + _figure(spend, "chart-spend")
            + _figure(made, "chart-throughput") + "</div>")


def _provenance(s: CorpusStats) -> str:
    m = s.manifest
    rows = [("tool", f"textbook-gen {__version__} (manifest: {m.get('tool', '?')})"),
            ("model", f"{(m.get('model') or {}).get('provider', '')}/"
                      f"{(m.get('model') or {}).get('name', '')}"),
            ("spec", f"{(m.get('spec') or {}).get('path', '')}"
                     f" sha256 {(m.get('spec') or {}).get('sha256', '')}")]
    rows += [(f"template {name}", digest) for name, digest in (m.get("templates") or {}).items()]
    return ("<h2>Provenance</h2><table id='provenance'>" + "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        + "</table>")
