"""The codec interface's per-request authentication hook, through the real proxy and the openai SDK.

No wire of the project signs its requests yet (Bedrock's SigV4 and Vertex's refreshed tokens will): a codec that
does is plugged in here in place of the OpenAI-shaped one, as a new wire would be, and the fake upstream checks
what arrives.
"""

from __future__ import annotations

import asyncio
import hashlib

import openai
import pytest

from cliproxy_proxy.catalog import Wire
from cliproxy_proxy.oauth.base import TokenError
from cliproxy_proxy.translate import UPSTREAM
from cliproxy_proxy.translate.codec import CredentialView, UpstreamCall
from cliproxy_proxy.translate.openai_chat import OpenAIChatCodec

from ..support.proxy import FakeProvider, base_config, compat_block

SIGNATURE = "x-test-signature"


class SigningCodec(OpenAIChatCodec):
    """Signs method, URL and the final body, after an await, as SigV4 would; keeps what it signed."""

    authenticates_each_request = True

    def __init__(self, refuse: bool = False) -> None:
        self.signed: list[tuple[str, bytes]] = []
        self.refuse = refuse

    async def authenticate(self, call: UpstreamCall, credential: CredentialView) -> None:
        await asyncio.sleep(0)  # a token fetch or a credential provider's refresh
        if self.refuse:
            raise TokenError("the identity provider refused")
        body = bytes(call.body)
        self.signed.append((call.url, body))
        call.headers[SIGNATURE] = hashlib.sha256(f"{call.method} {call.url}\n".encode() + body).hexdigest()
        call.headers["Authorization"] = f"Bearer {credential.current_secret()}"


async def test_a_codec_signs_each_request_over_its_final_url_and_body(
    provider: FakeProvider, start_proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    codec = SigningCodec()
    monkeypatch.setitem(UPSTREAM, Wire.OPENAI_CHAT, codec)
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    async with running.client() as client:
        answer = await client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}])
        stream = await client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": "again"}], stream=True
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert answer.choices[0].message.content and text
    assert len(codec.signed) == 2 and len(provider.received) == 2
    for (url, body), seen in zip(codec.signed, provider.received, strict=True):
        assert url == f"{provider.url}/chat/completions"
        assert seen.body["model"] == "up-small" and body.startswith(b"{")  # signed after the alias was rewritten
        expected = hashlib.sha256(f"POST {url}\n".encode() + body).hexdigest()
        assert {k.lower(): v for k, v in seen.headers.items()}[SIGNATURE] == expected


async def test_a_refused_signature_is_a_502_in_the_clients_format_not_a_500(
    provider: FakeProvider, start_proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(UPSTREAM, Wire.OPENAI_CHAT, SigningCodec(refuse=True))
    running = await start_proxy(base_config(**{"openai-compatibility": [compat_block(provider.url)]}))
    async with running.client() as client:
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 502
    assert refused.value.body["code"] == "upstream_token_unavailable"  # type: ignore[index]
    assert not provider.received  # nothing unsigned went out
