"""What the official-SDK providers share: client set-up, key check, one POST per request."""

from __future__ import annotations

import importlib
import time
from typing import Any, ClassVar

from textbook_gen.providers._keys import api_key
from textbook_gen.providers.base import Provider, RateLimitInfo, Request, Response, post_json
from textbook_gen.spec import ModelSettings


class HTTPProvider(Provider):
    """A provider behind an official SDK. Subclasses name the SDK, its client class and the
    endpoint, and implement ``request_body``, ``parse`` and ``limits``."""

    needs_key = True
    supports_batch = True
    connections_per_client = 64
    sdk: ClassVar[str]  # module name: "openai", "anthropic"
    client_class: ClassVar[str]  # "AsyncOpenAI", "AsyncAnthropic"
    path: ClassVar[str]  # the generation endpoint, relative to the client's base URL

    def __init__(self, settings: ModelSettings, *, timeout: float = 600.0,
                 base_url: str | None = None):
        super().__init__(settings, timeout=timeout)
        self._sdk = importlib.import_module(self.sdk)
        # A custom base_url usually means a self-hosted server that takes any key.
        key = api_key(settings, self.key_env_var or "", optional=base_url is not None)
        self.base_url = base_url
        self.client = getattr(self._sdk, self.client_class)(
            api_key=key or "not-needed", base_url=base_url, max_retries=0, timeout=timeout
        )

    @classmethod
    def check_key(cls, settings: ModelSettings) -> None:
        api_key(settings, cls.key_env_var or "", optional=bool(settings.base_url))

    @property
    def endpoint(self) -> str | None:
        return f"{str(self.client.base_url).rstrip('/')}/{self.path.lstrip('/')}"

    def request_body(self, req: Request) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def parse(data: dict[str, Any], latency: float, limits: RateLimitInfo | None) -> Response:
        raise NotImplementedError

    @staticmethod
    def limits(headers: Any) -> RateLimitInfo | None:
        return None

    async def complete(self, request: Request) -> Response:
        started = time.monotonic()
        data, headers = await post_json(self.client, self._sdk, self.path,
                                        self.request_body(request))
        return self.parse(data, time.monotonic() - started, self.limits(headers))

    async def aclose(self) -> None:
        await self.client.close()
