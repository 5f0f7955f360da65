"""Azure OpenAI: OpenAI's chat and embeddings wire at a resource's own host, with Azure's URLs and auth.

The body is OpenAI's, so OpenAI-shaped clients pass straight through. What differs is where a request goes and
how it is authorised. Deployment URLs name the deployment (the config's model name) in the path and need an
``api-version`` query; the v1 API (``/openai/v1``) takes the model in the body and needs no version. A key goes in
the ``api-key`` header; an Entra ID token (a session kept fresh by azure-identity) as a bearer token.
"""

from __future__ import annotations

import copy
from typing import Self

from .openai_chat import OpenAIChatCodec

#: The operations a deployment serves under ``/openai/deployments/{deployment}``; others stay at ``/openai``.
_PER_DEPLOYMENT = ("/chat/completions", "/completions", "/embeddings")


class AzureOpenAICodec(OpenAIChatCodec):
    """OpenAI chat as Azure serves it; :meth:`for_entry` gives each config entry its URL shape and auth."""

    api_version: str | None = None  # set: deployment URLs with this api-version; None: the v1 API
    entra = False  # True: the key is an Entra ID access token, sent as a bearer token

    def for_entry(self, entry: object) -> Self:
        codec = copy.copy(self)
        deployments = getattr(entry, "api", "v1") == "deployments"
        codec.api_version = getattr(entry, "api_version", None) if deployments else None
        codec.entra = getattr(entry, "entra", None) is not None
        return codec

    def auth_headers(self, key: str) -> dict[str, str]:
        return super().auth_headers(key) if self.entra else {"api-key": key}

    def locate(self, path: str, model: str) -> str:
        if self.api_version is None:
            return path
        if path in _PER_DEPLOYMENT:
            path = f"/deployments/{model}{path}"
        return f"{path}?api-version={self.api_version}"
