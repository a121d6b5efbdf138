"""The ``curation:`` section of a curriculum spec. Every stage has a setting that turns it off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Benchmark(_Strict):
    """A benchmark to decontaminate against: JSONL or Parquet (with a field) or plain text."""

    path: str
    field: str | None = Field(None, description="JSONL/Parquet field holding the text; "
                              "default: every string field")


class RepetitionSettings(_Strict):
    """Gopher repetition rules (Rae et al. 2021); a document over any limit is rejected."""

    max_dup_line_fraction: float = Field(0.30, ge=0, le=1)
    max_dup_paragraph_fraction: float = Field(0.30, ge=0, le=1)
    max_top_ngram_fraction: dict[int, float] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    max_dup_ngram_fraction: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 7: 0.13, 10: 0.10})


class VerifySettings(_Strict):
    """How exercises are run: the sandbox and its limits (docs/sandbox.md)."""

    timeout_s: float = Field(10.0, gt=0, le=600)
    memory_mb: int = Field(512, ge=32, description="address space per process")
    disk_mb: int = Field(64, ge=1, le=4096, description="the writable tmpfs in the sandbox")
    max_processes: int = Field(64, ge=2, le=4096, description="processes and threads "
                               "inside the sandbox")
    workers: int | None = Field(None, ge=1, description="default: the number of CPU cores")
    keep_partial: bool = Field(True, description="keep a document with only its passing "
                               "exercises; false rejects it if any exercise fails")
    bwrap: str = Field("bwrap", min_length=1, description="the bubblewrap program: a name "
                       "looked up on PATH, or a path")
    allow_unsandboxed: bool = Field(False, description="where bubblewrap cannot run, run "
                                    "exercises without isolation (rlimits only) instead of "
                                    "refusing")


class JudgeSettings(_Strict):
    enabled: bool = False
    min_score: float = Field(3.0, ge=0, le=5)
    provider: str | None = Field(None, description="default: the spec's model.provider")
    model: str | None = Field(None, description="default: the spec's model.name")
    max_tokens: int = Field(300, ge=16)


class ReviseSettings(_Strict):
    """Self-revision: a draft the judge scores under ``below`` goes back to the writer with the
    judge's critique; the revision is judged again and kept only if it scores higher."""

    below: float = Field(3.0, gt=0, le=5, description="revise drafts the judge scores under this")
    rounds: int = Field(1, ge=1, le=5, description="revisions per sample at most")
    template: str = Field("revise.md.j2", min_length=1, description="searched like the "
                          "documents' templates; the bundled one is the default")


class CopyGuardSettings(_Strict):
    """A document that copies its seed document is rejected (``copies_seed``)."""

    enabled: bool = True
    ngram: int = Field(8, ge=3, le=50, description="word n-grams compared")
    max_overlap: float = Field(0.2, ge=0, le=1, description="share of the document's n-grams "
                               "found in its seed above which it is a copy")


class DedupSettings(_Strict):
    exact: bool = True
    near: bool = True
    shingle_words: int = Field(5, ge=1, le=20)
    num_perm: int = Field(128, ge=16, le=1024)


class CurationSettings(_Strict):
    enabled: bool = True
    count_tokens: bool = Field(True, description="count every document's tokens (tiktoken "
                               "cl100k) into quality.tokens; false skips the count, the "
                               "largest per-document cost of curation, and needs min_tokens: 0 "
                               "and no max_tokens")
    min_tokens: int = Field(50, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    reject_truncated: bool = True
    reject_refusals: bool = True
    stock_openers: list[str] = Field(default_factory=lambda: [
        "once upon a time", "as an ai", "sure!", "sure,", "certainly!", "certainly,",
        "here is", "here's", "in today's", "welcome to", "in conclusion",
    ])
    check_structure: bool = True
    repetition: RepetitionSettings | None = Field(default_factory=RepetitionSettings)
    verify_code: bool = True
    verify: VerifySettings = Field(default_factory=VerifySettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    revise: ReviseSettings | None = None
    copy_guard: CopyGuardSettings = Field(default_factory=CopyGuardSettings)
    near_dup_threshold: float = Field(0.8, gt=0.0, le=1.0)
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    decontaminate: list[Benchmark] = Field(default_factory=list)
    decontam_ngram: int = Field(13, ge=3, le=50)

    @model_validator(mode="after")
    def _limits_need_counts(self) -> CurationSettings:
        if not self.count_tokens and (self.min_tokens or self.max_tokens is not None):
            raise ValueError("count_tokens: false leaves nothing to hold min_tokens and "
                             "max_tokens against; set min_tokens: 0 and remove max_tokens, or "
                             "count tokens")
        return self

    @field_validator("decontaminate", mode="before")
    @classmethod
    def _paths_as_benchmarks(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"path": x} if isinstance(x, str) else x for x in v]
        return v

    def resolve_paths(self, base_dir: Path) -> CurationSettings:
        """Benchmark paths relative to ``base_dir`` (the spec's folder) made absolute."""
        benches = [b.model_copy(update={"path": str((base_dir / b.path).resolve())})
                   for b in self.decontaminate]
        return self.model_copy(update={"decontaminate": benches})

    def without_judge(self) -> CurationSettings:
        """These settings with the judge (and the revision it drives) off."""
        return self.model_copy(update={"judge": self.judge.model_copy(update={"enabled": False}),
                                       "revise": None})

    def all_stages_off(self) -> CurationSettings:
        """These settings with every rejecting stage turned off (``enabled: false``)."""
        return self.without_judge().model_copy(update={
            "min_tokens": 0, "max_tokens": None, "reject_truncated": False,
            "reject_refusals": False, "stock_openers": [], "check_structure": False,
            "repetition": None, "verify_code": False,
            "copy_guard": self.copy_guard.model_copy(update={"enabled": False}),
            "dedup": self.dedup.model_copy(update={"exact": False, "near": False}),
            "decontaminate": []})
