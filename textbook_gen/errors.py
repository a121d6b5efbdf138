"""Exception tree for textbook-gen. The CLI turns any of these into one message and an exit code.

    TextbookGenError                 exit 1 unless noted
    ├── SpecError                    a curriculum file is invalid (exit 2); carries every problem
    ├── TemplateProblem              a prompt template failed to load or render (exit 2)
    ├── ConfigError                  missing API key, missing optional package, bad option (exit 2)
    │   └── JudgeUnusable            the judge model's answers carry no score (exit 2)
    ├── InputError                   an input file is unreadable or malformed (exit 2)
    ├── ProviderError                an API call failed; ``retryable`` says whether trying again can help
    │   └── FatalProviderError       auth / unknown model / bad request: stop the whole run (exit 3)
    ├── StoreError                   the run store cannot be written (disk full, lock held): exit 1
    ├── BudgetExceeded               the next request would cross --max-cost / --max-tokens (exit 4)
    ├── JobsFailed                   the run finished but some jobs failed; outputs are written (exit 5)
    ├── CollapseStopped              --stop-on-collapse: the watch stopped the run; resumable (exit 6)
    ├── NothingKept                  the run finished, no job failed, but curation kept nothing (exit 7)
    └── Interrupted                  Ctrl-C: state is saved and the run can be resumed (exit 130)

Exit codes, as the README documents them: 0 every job ended kept or rejected; 1 an error of
the machine or the tool (message says which); 2 bad input; 3 the provider refused the run;
4 budget reached; 5 finished, some jobs failed; 6 stopped by the collapse watch; 7 finished,
but nothing was kept; 130 interrupted.
"""

from __future__ import annotations


class TextbookGenError(Exception):
    exit_code = 1


class SpecError(TextbookGenError):
    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class TemplateProblem(TextbookGenError):
    exit_code = 2


class ConfigError(TextbookGenError):
    exit_code = 2


class JudgeUnusable(ConfigError):
    """The judge model's answers carry no score: it cannot judge (exit 2, nothing lost)."""


class InputError(TextbookGenError):
    """A file given to the tool cannot be read as what it claims to be; names file and line."""

    exit_code = 2


class ProviderError(TextbookGenError):
    """A failed API call. ``retry_after`` is the server's hint in seconds, when it gave one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        kind: str = "error",
        usage: tuple[int, int] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.kind = kind
        # (input, output) tokens the provider reported for a call it billed but whose answer
        # is unusable (empty, unparseable): the ledger charges them all the same
        self.usage = usage


class FatalProviderError(ProviderError):
    """Retrying cannot help and every other request would fail the same way (401, 403, 404)."""

    exit_code = 3


class BudgetExceeded(TextbookGenError):
    exit_code = 4


class StoreError(TextbookGenError):
    """The run store could not be written; what was paid is saved beside it where possible."""


class JobsFailed(TextbookGenError):
    exit_code = 5


class CollapseStopped(TextbookGenError):
    exit_code = 6


class NothingKept(TextbookGenError):
    """Every job ended, none failed, and curation rejected every document (exit 7)."""

    exit_code = 7


class Interrupted(TextbookGenError):
    exit_code = 130
