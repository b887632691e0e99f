"""`SearchSettings`: the fields every mode's config has (one config style: pydantic, validated once).

Each mode's config adds its own fields (agent/config.py's RunConfig, agent/rates/config.py's
RatesConfig) and may change a default here; the runtime reads only these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autoprune.agent.runtime.folder import CONFIG_FILE


class SearchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    budget: int = Field(50, ge=0, description="what the search may spend (each mode says in what)")
    seed: int = 0
    llm_base_url: Optional[str] = Field(None, description="OpenAI-compatible endpoint; None = the embedded LLM")
    llm_model: Optional[str] = None
    llm_max_tokens: int = Field(768, ge=16, description="cap per reply; short-answer nodes ask for less")
    llm_timeout_s: float = Field(600.0, gt=0, description="per request; a CPU-served model can be slow")
    temperature: float = Field(0.8, ge=0.0, le=2.0)

    @field_validator("llm_base_url")
    @classmethod
    def _http_endpoint(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"--llm-base-url must be an http:// or https:// URL, not {value[:80]!r}")
        return value

    @model_validator(mode="after")
    def _llm_pair(self):
        if self.llm_model and not self.llm_base_url:
            raise ValueError("--llm-model needs --llm-base-url (without both, the embedded LLM is used)")
        return self

    @property
    def uses_embedded_llm(self) -> bool:
        return not self.llm_base_url

    def save(self, run_dir: Path) -> Path:
        path = Path(run_dir) / CONFIG_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path
