"""The curriculum spec: YAML -> validated ``Curriculum``; first stage of the flow.

Errors are collected, not raised one at a time: ``load_curriculum`` reports every problem
in a file at once as ``file:line: key.path: what is wrong (did you mean ...?)``.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from textbook_gen.curate.settings import CurationSettings
from textbook_gen.errors import SpecError

Axis = Literal["subject", "topic", "audience", "style", "persona"]
SLUG = r"^[a-z0-9][a-z0-9._-]*$"
DEFAULT_PER: tuple[Axis, ...] = ("topic", "audience", "style")
MAX_JOBS = 1_000_000_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelSettings(_Strict):
    provider: Literal["local", "openai", "anthropic"] = "local"
    name: str = Field("smollm2-135m-instruct", min_length=1)
    base_url: list[str] = Field(default_factory=list)
    api_key_env: str | None = None
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int = Field(900, ge=1, le=200_000)
    system: str | None = None
    n_ctx: int = Field(4096, ge=256, description="local provider: context window")

    @field_validator("base_url", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class EngineSettings(_Strict):
    concurrency: int = Field(8, ge=1, le=10_000)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    input_tpm: int | None = Field(None, ge=1)
    output_tpm: int | None = Field(None, ge=1)
    max_retries: int = Field(6, ge=0, le=50)
    timeout: float = Field(600.0, gt=0)
    max_cost_usd: float | None = Field(None, ge=0)
    max_total_tokens: int | None = Field(None, ge=1)
    retry_truncated: bool = False


class Topic(_Strict):
    name: str = Field(min_length=1)
    weight: int = Field(1, ge=1, le=1000)
    notes: str = ""

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


class Subject(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    include: str | None = Field(None, description="a YAML file of topics (as `grow` writes "
                                "it), relative to the spec; its topics follow those listed here")
    topics: list[Topic] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_topics(self) -> Subject:
        if not self.topics:
            raise ValueError("needs topics: list them, or include a topics file (include:"
                             " topics.yaml, as `textbook-gen grow` writes)")
        return self


class TopicFile(_Strict):
    """A file of topics a subject includes (``include:``), as ``textbook-gen grow`` writes it."""

    subject: str | None = Field(None, description="the subject it was grown for (a note)")
    description: str = ""
    topics: list[Topic] = Field(min_length=1)


class DocumentSpec(_Strict):
    kind: str = Field(pattern=SLUG)
    template: str = Field(min_length=1)
    per: list[Axis] = Field(default_factory=lambda: list(DEFAULT_PER), min_length=1)
    samples: int = Field(1, ge=1, le=100_000)
    max_tokens: int | None = Field(None, ge=1, le=200_000)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    target_kept: int | None = Field(None, ge=1, le=100_000, description="kept documents "
                                    "wanted per cell: cells under it get new samples")
    max_samples: int | None = Field(None, ge=1, le=100_000, description="samples a cell may "
                                    "send at most (default: 3 x target_kept)")
    candidates: int = Field(1, ge=1, le=16, description="answers per sample; the judge, then "
                            "verification, then diversity pick one (best-of-n)")

    @model_validator(mode="after")
    def _loop_settings(self) -> DocumentSpec:
        if self.target_kept is None:
            if self.max_samples is not None:
                raise ValueError("max_samples caps the samples target_kept asks for; set"
                                 " target_kept too, or use samples for a fixed number")
            return self
        if "samples" in self.model_fields_set:
            raise ValueError("give samples (a fixed number to send) or target_kept (documents"
                             " to keep; the loop sends what it needs), not both")
        if self.max_samples is not None and self.max_samples < self.target_kept:
            raise ValueError(f"max_samples ({self.max_samples}) is under target_kept"
                             f" ({self.target_kept}); the target could never be reached")
        return self

    @property
    def first_samples(self) -> int:
        """Samples per cell the first pass sends (per unit of topic weight)."""
        return self.target_kept or self.samples

    @property
    def sample_cap(self) -> int:
        """Samples per cell the loop may send at most (per unit of topic weight)."""
        if self.target_kept is None:
            return self.samples
        return self.max_samples or 3 * self.target_kept

    @field_validator("per")
    @classmethod
    def _per_has_place(cls, v: list[str]) -> list[str]:
        if "topic" not in v and "subject" not in v:
            raise ValueError("must include 'topic' or 'subject' so each document has a place")
        if len(set(v)) != len(v):
            raise ValueError("lists an axis twice")
        return v


class WatchSettings(_Strict):
    """The live collapse watch over each kind's most recent answers (textbook_gen/watch.py)."""

    enabled: bool = True
    window: int = Field(200, ge=10, le=100_000, description="recent answers per kind")
    min_answers: int = Field(30, ge=5, description="answers in the window before it judges")
    opening_words: int = Field(3, ge=1, le=10)
    max_opening_share: float = Field(0.10, gt=0, le=1, description="most common opening")
    max_near_dup_share: float = Field(0.05, gt=0, le=1, description="answers with a near "
                                      "duplicate (Jaccard of word 5-grams about 0.8 or more) "
                                      "in the window")
    stop: bool = Field(False, description="stop the run when it raises an alarm "
                       "(--stop-on-collapse); resumable")


class OutputSettings(_Strict):
    format: Literal["parquet", "jsonl.zst", "jsonl"] = "parquet"  # loads with datasets as is
    shard_max_records: int = Field(10_000, ge=1)


class SeedSettings(_Strict):
    """Seed documents: each job's prompt is grounded in one (textbook_gen/seeds.py)."""

    path: str = Field(min_length=1, description="JSONL (plain or .zst), Parquet, or a folder of"
                      " .txt/.md files, relative to the spec")
    text_field: str = "text"
    id_field: str | None = Field(None, description="default: file name and record number")
    match: Literal["topic", "random"] = Field("topic", description="topic: among the best BM25"
                                              " matches of the job's topic; random: any")
    top: int = Field(20, ge=1, le=10_000, description="matches a job draws from (match: topic)")
    max_chars: int = Field(2000, ge=100, le=200_000, description="of the seed the template sees")


class Price(_Strict):
    input: float = Field(ge=0, description="USD per million input tokens")
    output: float = Field(ge=0, description="USD per million output tokens")


class Curriculum(_Strict):
    name: str = Field(pattern=SLUG)
    description: str = ""
    seed: int = 0
    model: ModelSettings = Field(default_factory=ModelSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    audiences: list[str] = Field(default_factory=lambda: ["general readers"], min_length=1)
    styles: list[str] = Field(default_factory=lambda: ["textbook"], min_length=1)
    personas: list[str] = Field(default_factory=list, description="voices to write in: an axis "
                                "like audiences (a list, or a file with one per line)")
    subjects: list[Subject] = Field(min_length=1)
    documents: list[DocumentSpec] = Field(min_length=1)
    templates: str | None = None
    seed_words: Annotated[int, Field(ge=0, le=20)] = 3
    variables: dict[str, Any] = Field(default_factory=dict, description="extra template variables")
    seeds: SeedSettings | None = None
    curation: CurationSettings = Field(default_factory=CurationSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    prices: dict[str, Price] = Field(default_factory=dict)

    _source: Path = PrivateAttr(default=Path("<memory>"))
    _sha256: str = PrivateAttr(default="")
    _lines: dict[tuple[Any, ...], int] = PrivateAttr(default_factory=dict)
    _to_grow: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> Curriculum:
        problems = []
        subject_slugs: dict[str, str] = {}
        for s in self.subjects:
            prev = subject_slugs.setdefault(slugify(s.name), s.name)
            if prev != s.name or sum(1 for x in self.subjects if x.name == s.name) > 1:
                problems.append(f"subject {s.name!r} collides with {prev!r}; names must differ")
            topic_slugs: dict[str, str] = {}
            for t in s.topics:
                if topic_slugs.setdefault(slugify(t.name), t.name) != t.name:
                    problems.append(f"topic {t.name!r} in {s.name!r} collides with another topic")
        for axis, values in (("audiences", self.audiences), ("styles", self.styles),
                             ("personas", self.personas)):
            seen: dict[str, str] = {}
            for v in values:
                prev = seen.setdefault(slugify(v), v)
                if prev != v or values.count(v) > 1:
                    problems.append(f"{axis}: {v!r} collides with {prev!r} (job ids are made"
                                    " from these names); make them differ")
        judge = self.curation.enabled and self.curation.judge.enabled
        if self.curation.revise is not None and not judge:
            problems.append("curation.revise: revision sends back drafts the judge scored low"
                            " with its critique; turn the judge on (curation.judge.enabled:"
                            " true) or remove revise")
        for d in self.documents:
            if "persona" in d.per and not self.personas:
                problems.append(f"documents: {d.kind} multiplies over persona, but the spec has"
                                " no personas; add personas: [...] (or a file), or drop it from"
                                " per")
        kinds = [d.kind for d in self.documents]
        if len(set(kinds)) != len(kinds):
            problems.append("documents: each entry needs its own 'kind'")
        total = self.job_count(most=True)
        if total > MAX_JOBS:
            problems.append(f"documents: this spec asks for {total:,} jobs; the most one spec may"
                            f" ask for is {MAX_JOBS:,} (lower samples, topic weights or axes)")
        if problems:
            raise ValueError("; ".join(sorted(set(problems))))
        return self

    def job_count(self, *, most: bool = False) -> int:
        """How many generation requests the first pass sends (``most``: the loop at every
        cap, revisions included), by arithmetic, never by enumerating them."""
        total = 0
        rounds = self.curation.revise.rounds if self.curation.revise is not None else 0
        for doc in self.documents:
            total += self.cell_count(doc) * (
                (doc.sample_cap * (doc.candidates + rounds)) if most
                else doc.first_samples * doc.candidates)
        return total

    def cell_count(self, doc: DocumentSpec) -> int:
        """Cells of one document kind, counted once per unit of topic weight."""
        weights = sum(t.weight for s in self.subjects for t in s.topics)
        places = weights if "topic" in doc.per else len(self.subjects)
        return places * (len(self.audiences) if "audience" in doc.per else 1) * (
            len(self.styles) if "style" in doc.per else 1) * (
            len(self.personas) if "persona" in doc.per else 1)

    @property
    def to_grow(self) -> list[str]:
        """Subjects whose include file does not exist yet (loaded with ``to_grow``)."""
        return list(self._to_grow)

    @property
    def source_path(self) -> Path:
        return self._source

    def where(self, *loc: Any) -> str:
        """``file:line`` of a key path in the spec file (the nearest line known)."""
        return f"{self._source}:{_line_for(tuple(loc), self._lines)}"

    @property
    def sha256(self) -> str:
        return self._sha256

    @property
    def template_dirs(self) -> list[Path]:
        """Folders searched for templates, the spec's own first."""
        dirs = []
        if self.templates:
            dirs.append((self._source.parent / self.templates).resolve())
        return dirs


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or hashlib.sha256(text.encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------- loading


def load_curriculum(path: str | Path, *, to_grow: bool = False) -> Curriculum:
    """Read and validate a spec; raise ``SpecError`` listing every problem with its line.

    ``to_grow``: a subject whose ``include`` file does not exist yet is not an error (``grow``
    writes it); such subjects get a stand-in topic and are listed in ``spec.to_grow``."""
    path = Path(path)
    data, lines, raw = _read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError([f"{path}:1: the file must be a mapping of keys (name:, subjects:, ...)"])
    missing: list[str] = []
    parts = _resolve_parts(path, data, lines, missing if to_grow else None)
    spec: Curriculum = _validate(path, data, lines, Curriculum)
    spec._source = path.resolve()
    digest = hashlib.sha256(raw)
    for part in parts:  # included topic files and the personas file are part of the spec
        digest.update(part)
    spec._sha256 = digest.hexdigest()
    spec._lines = lines
    spec._to_grow = missing
    return spec


def _resolve_parts(path: Path, data: dict[str, Any], lines: dict[tuple[Any, ...], int],
                   to_grow: list[str] | None = None) -> list[bytes]:
    """Read the files a spec names into it, before it is validated: ``personas: FILE`` (one
    per line; blank lines and # comments skipped) and each subject's ``include: FILE`` (a
    ``TopicFile``, validated on its own, so its errors name its own lines). Returns the bytes
    read, which are part of the spec's hash."""
    problems: list[str] = []
    parts: list[bytes] = []

    def read(key: tuple[Any, ...], name: Any) -> tuple[Path, bytes] | None:
        where = f"{path}:{_line_for(key, lines)}: {_dotted(key)}"
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{where}: give a file name (relative to {path.name})")
            return None
        file = (path.parent / name).resolve()
        try:
            return file, file.read_bytes()
        except OSError as e:
            hint = (" (textbook-gen grow writes it)" if "include" in key else "")
            problems.append(f"{where}: cannot read {file} ({e.strerror or e}); the path is"
                            f" relative to {path.name}{hint}")
            return None

    personas = data.get("personas")
    if isinstance(personas, str):
        found = read(("personas",), personas)
        if found is not None:
            file, raw = found
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                problems.append(f"{file}: not UTF-8 text; save it as UTF-8")
            else:
                parts.append(raw)
                data["personas"] = [ln.strip() for ln in text.splitlines()
                                    if ln.strip() and not ln.strip().startswith("#")]
                if not data["personas"]:
                    problems.append(f"{file}: no personas in it (one per line)")
    for i, subject in enumerate(data.get("subjects") or []):
        if not isinstance(subject, dict) or "include" not in subject:
            continue
        name = subject.get("include")
        if (to_grow is not None and isinstance(name, str) and name.strip()
                and not (path.parent / name).exists()):
            to_grow.append(str(subject.get("name")))
            if not subject.get("topics"):
                subject["topics"] = [str(subject.get("name") or "topic")]
            continue
        found = read(("subjects", i, "include"), subject["include"])
        if found is None:
            continue
        file, _ = found
        inc, inc_lines, raw = _read_yaml(file)  # SpecError with the included file's lines
        if not isinstance(inc, dict):
            problems.append(f"{file}:1: a topics file is a mapping with topics: [...]")
            continue
        topics = _validate(file, inc, inc_lines, TopicFile)
        parts.append(raw)
        listed = subject.get("topics") or []
        subject["topics"] = [*(listed if isinstance(listed, list) else []),
                             *(t.model_dump() for t in topics.topics)]
        if not subject.get("description") and topics.description:
            subject["description"] = topics.description
    if problems:
        raise SpecError(problems)
    return parts


MAX_YAML_VALUES = 200_000  # after aliases are expanded: a spec is hand-written, not a data dump
MAX_YAML_DEPTH = 64
_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16",
         b"\xfe\xff": "UTF-16"}


def _decode(path: Path, raw: bytes) -> tuple[str | None, str | None]:
    """The text of a spec file, or a problem that names the line."""
    for bom, name in _BOMS.items():
        if raw.startswith(bom):
            return None, (f"{path}:1: the file is {name} text; save it as UTF-8 (most editors:"
                          " 'Save with encoding')")
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        return None, (f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column"
                      f" {column}); save the file as UTF-8")


def _measure(path: Path, root: yaml.Node) -> str | None:
    """Refuse alias bombs, recursive aliases and deep nesting before anything walks the data."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        line = node.start_mark.line + 1
        if key in open_nodes:
            raise _YamlLimit(f"{path}:{line}: an alias refers to the value that contains it"
                             " (a recursive structure); a spec cannot be recursive")
        if depth > MAX_YAML_DEPTH:
            raise _YamlLimit(f"{path}:{line}: values nested more than {MAX_YAML_DEPTH} levels"
                             " deep; a curriculum spec never needs that")
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(v, depth + 1) for v in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        open_nodes.discard(key)
        if total > MAX_YAML_VALUES:
            raise _YamlLimit(f"{path}:{line}: this value expands (through YAML aliases) to more"
                             f" than {MAX_YAML_VALUES:,} values; write the spec without such"
                             " aliases")
        sizes[key] = total
        return total

    try:
        size(root, 0)
    except _YamlLimit as e:
        return str(e)
    return None


class _YamlLimit(Exception):
    pass


def load_yaml_model(path: Path, model: Any = None) -> Any:
    """Read a YAML file into ``model`` (a pydantic class), or return the data when None;
    raise ``SpecError`` with every problem as ``file:line: key: what is wrong``."""
    data, lines, _ = _read_yaml(Path(path))
    if model is None:
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError([f"{path}:1: the file must be a mapping of keys"])
    return _validate(Path(path), data, lines, model)


def key_line(path: Path, *loc: Any) -> str:
    """``file:line`` of a key path in a YAML file (the nearest line known)."""
    _, lines, _ = _read_yaml(Path(path))
    return f"{path}:{_line_for(tuple(loc), lines)}"


def _read_yaml(path: Path) -> tuple[Any, dict[tuple[Any, ...], int], bytes]:
    """The file's data, the line of every key path, and its bytes; problems raise."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SpecError([f"{path}: cannot read: {e.strerror or e}"]) from None
    data, lines, problems = _parse_yaml(path, raw)
    if problems:
        raise SpecError(problems)
    return data, lines, raw


def _validate(path: Path, data: dict[str, Any], lines: dict[tuple[Any, ...], int],
              model: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise SpecError(_format_errors(path, e, lines, model)) from None


def _parse_yaml(
    path: Path, raw: bytes
) -> tuple[Any, dict[tuple[Any, ...], int], list[str]]:
    text, problem = _decode(path, raw)
    if text is None:
        return None, {}, [problem or f"{path}: cannot decode"]
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        problem = _measure(path, node) if node is not None else None
        if problem:
            return None, {}, [problem]
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        return None, {}, [f"{path}:{line}: YAML syntax: {e.problem or e.context}"]
    except yaml.YAMLError as e:
        return None, {}, [f"{path}: YAML: {e}"]
    except RecursionError:
        return None, {}, [f"{path}: values nested too deep to read; a curriculum spec never"
                          " needs that"]
    lines: dict[tuple[Any, ...], int] = {}
    problems: list[str] = []
    if node is not None:
        _index_lines(node, (), lines, problems, path)
    return data, lines, problems


def _index_lines(node: yaml.Node, key: tuple[Any, ...], out: dict, problems: list, path: Path):
    out[key] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for k, v in node.value:
            name = k.value if isinstance(k, yaml.ScalarNode) else f"<{k.tag.rsplit(':', 1)[-1]}>"
            if name in seen:
                line = k.start_mark.line + 1
                problems.append(f"{path}:{line}: {_dotted(key + (name,))}: key appears twice")
            seen.add(name)
            out[key + (name,)] = k.start_mark.line + 1
            _index_lines(v, key + (name,), out, problems, path)
            out[key + (name,)] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _index_lines(v, key + (i,), out, problems, path)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _line_for(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


def _format_errors(path: Path, err: ValidationError, lines: dict, root: Any = None) -> list[str]:
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = f"{path}:{_line_for(loc, lines)}: {_dotted(loc)}"
        if e["type"] == "extra_forbidden":
            allowed = list(_fields_at(loc[:-1], root))
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
            fix = f"did you mean '{hint[0]}'?" if hint else f"allowed keys: {', '.join(allowed)}"
            problems.append(f"{where}: unknown key ({fix})")
        elif e["type"] == "missing":
            problems.append(f"{where}: required key is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            shown = f" (got {got!r})" if isinstance(got, str | int | float) else ""
            problems.append(f"{where}: {msg}{shown}")
    return problems


def _fields_at(loc: tuple[Any, ...], root: Any = None) -> Iterator[str]:
    """The keys allowed at a location, for did-you-mean hints."""
    root = root or Curriculum
    cls: Any = root
    skip_key = False  # the part after a dict-valued field is a key the user chose
    for part in loc:
        if isinstance(part, int) or skip_key:
            skip_key = False
            continue
        field = cls.model_fields.get(part) if _is_model(cls) else None
        if field is None:
            return iter(())
        skip_key = typing.get_origin(field.annotation) is dict
        cls = _model_in(field.annotation)
        if cls is None:
            return iter(())
    return iter(cls.model_fields) if _is_model(cls) else iter(())


def _is_model(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, BaseModel)


def _model_in(annotation: Any) -> Any:
    if _is_model(annotation):
        return annotation
    if typing.get_origin(annotation) in (list, dict, typing.Union, types.UnionType, Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
