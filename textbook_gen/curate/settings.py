"""The ``curation:`` section of a curriculum spec. Every stage has a setting that turns it off."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CurationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    min_tokens: int = Field(50, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    near_dup_threshold: float = Field(0.8, gt=0.0, le=1.0)
    verify_code: bool = True
    decontaminate: list[str] = Field(default_factory=list)
