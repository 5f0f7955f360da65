"""AWS Bedrock through the proxy: SigV4 with keys from files, a profile or the environment, failover on refused
signatures, expired keys and throttling, temporary keys refreshed as they near their expiry, and embeddings.

The upstream is the strict fake of ``tests/fakes/bedrock.py``: it recomputes every signature with botocore from the
request as it arrived, and validates each body against botocore's own service model. The clients are the SDKs
(the SDK matrix in ``test_matrix.py`` covers text, streamed tool calls and images for each client format).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import botocore.session
import openai
import pytest

from ..fakes.bedrock import Fault, start_bedrock
from ..support.proxy import CLIENT_KEY, base_config

CLAUDE = "anthropic.claude-3-7-sonnet-20250219-v1:0"
MODELS = [{"name": CLAUDE, "alias": "sonnet"}, {"name": "amazon.titan-embed-text-v2:0", "alias": "titan"},
          {"name": "cohere.embed-english-v3", "alias": "cohere"}]  # fmt: skip


def key_files(directory: Path, name: str, keys: tuple[str, str, str | None]) -> dict[str, str]:
    """Writes the keys as a mounted Secret would hold them; the block's ``*-file`` fields naming them."""
    fields = {}
    for field, value in zip(("access-key-id", "secret-access-key", "session-token"), keys, strict=True):
        if value is not None:
            (directory / f"{name}.{field}").write_text(value + "\n")
            fields[f"{field}-file"] = f"{name}.{field}"
    return fields


def bedrock(url: str, **extra: Any) -> dict[str, Any]:
    return {"region": "us-east-1", "base-url": url, "models": MODELS, **extra}


async def metrics(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        return await response.text()


async def test_the_fake_speaks_bedrocks_wire_to_a_real_botocore_client(aiohttp_server) -> None:
    """botocore signs with its own add_auth and parses the fake's JSON and event-stream answers."""
    service, url = await start_bedrock(aiohttp_server)
    access, secret, token = service.issue()

    def calls() -> tuple[Any, ...]:
        client = botocore.session.get_session().create_client(
            "bedrock-runtime", region_name="us-east-1", endpoint_url=url, aws_access_key_id=access,
            aws_secret_access_key=secret, aws_session_token=token,
        )  # fmt: skip
        image = {"image": {"format": "png", "source": {"bytes": b"\x89PNG"}}}
        messages = [{"role": "user", "content": [{"text": "hi"}, image]}]
        whole = client.converse(modelId=CLAUDE, messages=messages)
        tools = {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}]}
        events = list(client.converse_stream(modelId=CLAUDE, messages=messages, toolConfig=tools)["stream"])
        vector = json.loads(client.invoke_model(modelId="amazon.titan-embed-text-v2:0", body=b'{"inputText": "a"}',
                                                contentType="application/json")["body"].read())  # fmt: skip
        return whole, events, vector

    whole, events, vector = await asyncio.to_thread(calls)
    assert whole["output"]["message"]["content"] == [{"text": "echo: hi [image/png 4 bytes]"}]
    assert [next(iter(e)) for e in events] == ["messageStart", "contentBlockStart", "contentBlockDelta",
                                               "contentBlockStop", "messageStop", "metadata"]  # fmt: skip
    assert len(vector["embedding"]) == 1024
    assert [r.problem for r in service.received] == [None, None, None]


async def test_refused_signatures_and_expired_keys_fail_over_and_no_key_is_logged(
    aiohttp_server, start_proxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # botocore's own signer logs the canonical request, session token and all
    service, url = await start_bedrock(aiohttp_server)
    good = service.issue()
    wrong_secret = (good[0], "not-the-secret", good[2])
    expired = service.issue(ttl=-60)
    config = base_config(bedrock=[
        bedrock(url, priority=2, **key_files(tmp_path, "wrong", wrong_secret)),
        bedrock(url, priority=1, **key_files(tmp_path, "expired", expired)),
        bedrock(url, **key_files(tmp_path, "good", good)),
    ])  # fmt: skip
    running = await start_proxy(config)
    client = running.client()
    answer = await client.chat.completions.create(model="sonnet", messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content == "echo: hello"
    assert answer.model == "sonnet" and answer.usage is not None and answer.usage.prompt_tokens > 0
    assert [r.problem for r in service.received] == ["signature", "signature", None]
    assert [r.headers["Authorization"].split("/")[0].split("=")[1] for r in service.received] == [
        good[0], expired[0], good[0]
    ]  # fmt: skip
    # Refused keys rest as an auth failure: the next request goes straight to the good one.
    await client.chat.completions.create(model="sonnet", messages=[{"role": "user", "content": "again"}])
    assert len(service.received) == 4
    assert 'cliproxy_credential_cooldowns_total{provider="bedrock",reason="auth"} 2.0' in await metrics(running.url)
    leaked = caplog.text + await metrics(running.url)
    for secret in (good[1], good[2], expired[1], expired[2]):
        assert secret and secret not in leaked


async def test_every_key_refused_is_a_502_in_the_clients_format(aiohttp_server, start_proxy, tmp_path: Path) -> None:
    service, url = await start_bedrock(aiohttp_server)
    unknown = ("AKIAUNKNOWN000000000", "secret", None)
    running = await start_proxy(base_config(bedrock=[bedrock(url, **key_files(tmp_path, "unknown", unknown))]))
    with pytest.raises(openai.APIStatusError) as refused:
        await running.client().chat.completions.create(model="sonnet", messages=[{"role": "user", "content": "x"}])
    assert refused.value.status_code == 502
    assert refused.value.body["code"] == "upstream_auth_error"  # type: ignore[index]
    assert "secret" not in str(refused.value.body)
    assert service.received[0].problem == "signature"


async def test_throttling_fails_over_to_the_next_credential(
    aiohttp_server, start_proxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Both entries take their keys from the default chain (the environment here, as IRSA's would be)."""
    service, url = await start_bedrock(aiohttp_server)
    access, secret, token = service.issue()
    isolate(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token or "")
    running = await start_proxy(base_config(bedrock=[bedrock(url, name="first"), bedrock(url, name="second")]))
    service.faults.append(Fault())  # ThrottlingException, 429
    stream = await running.client().chat.completions.create(
        model="sonnet", messages=[{"role": "user", "content": "hello there"}], stream=True
    )
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert text == "echo: hello there"
    assert [(r.action, r.problem) for r in service.received] == [("converse-stream", None)] * 2
    assert 'cliproxy_credential_cooldowns_total{provider="bedrock",reason="quota"} 1.0' in await metrics(running.url)


def isolate(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """botocore's chain sees only what the test gives it: no developer's ~/.aws, no instance metadata."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(directory / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(directory / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


PROCESS = """
import json, sys
keys = json.load(open(sys.argv[1]))
print(json.dumps({"Version": 1, "AccessKeyId": keys[0], "SecretAccessKey": keys[1], "SessionToken": keys[2],
                  "Expiration": keys[3]}))
"""


async def test_keys_of_a_profile_are_refreshed_as_they_near_their_expiry(
    aiohttp_server, start_proxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A profile's ``credential_process`` gives keys five minutes from expiry: botocore wants them refreshed before
    each use, and the proxy does so in a thread, picking up the keys the process hands out next."""
    service, url = await start_bedrock(aiohttp_server)
    isolate(monkeypatch, tmp_path)
    soon = datetime.fromtimestamp(time.time() + 300, UTC).isoformat()
    current = tmp_path / "current-keys.json"
    first = service.issue()
    current.write_text(json.dumps([*first, soon]))
    (tmp_path / "process.py").write_text(PROCESS)
    (tmp_path / "aws-config").write_text(
        f"[profile bedrock-test]\ncredential_process = {sys.executable} {tmp_path / 'process.py'} {current}\n"
    )
    running = await start_proxy(base_config(bedrock=[bedrock(url, profile="bedrock-test")]))
    client = running.client()
    await client.chat.completions.create(model="sonnet", messages=[{"role": "user", "content": "one"}])
    second = service.issue()
    current.write_text(json.dumps([*second, soon]))
    del service.keys[first[0]]  # the old keys stop working, as rotated STS keys do
    answer = await client.chat.completions.create(model="sonnet", messages=[{"role": "user", "content": "two"}])
    assert answer.choices[0].message.content == "echo: two"
    used = [r.headers["Authorization"].split("/")[0].split("=")[1] for r in service.received]
    assert used == [first[0], second[0]] and all(r.problem is None for r in service.received)


async def test_embeddings_through_titan_and_cohere(aiohttp_server, start_proxy, tmp_path: Path) -> None:
    service, url = await start_bedrock(aiohttp_server)
    running = await start_proxy(base_config(bedrock=[bedrock(url, **key_files(tmp_path, "k", service.issue()))]))
    client = running.client()
    titan = await client.embeddings.create(model="titan", input="hello embedding world", dimensions=256)
    assert len(titan.data[0].embedding) == 256 and titan.usage.prompt_tokens == 3
    cohere = await client.embeddings.create(model="cohere", input=["first text", "second"])
    assert [len(d.embedding) for d in cohere.data] == [1024, 1024] and cohere.usage.prompt_tokens > 0
    assert service.received[-1].body == {"texts": ["first text", "second"], "input_type": "search_document"}
    with pytest.raises(openai.BadRequestError, match="one text per request"):
        await client.embeddings.create(model="titan", input=["a", "b"])
    assert [r.problem for r in service.received] == [None, None]


async def test_claudes_reasoning_on_bedrock_reaches_an_anthropic_client(
    aiohttp_server, start_proxy, tmp_path: Path
) -> None:
    service, url = await start_bedrock(aiohttp_server)
    running = await start_proxy(base_config(bedrock=[bedrock(url, **key_files(tmp_path, "k", service.issue()))]))
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=CLIENT_KEY, max_retries=0)
    messages: list[Any] = [{"role": "user", "content": "think first"}]
    thinking: Any = {"type": "enabled", "budget_tokens": 2048}
    async with client.messages.stream(model="sonnet", max_tokens=1024, thinking=thinking, messages=messages) as stream:
        final = await stream.get_final_message()
    assert [(b.type, getattr(b, "signature", None)) for b in final.content] == [
        ("thinking", "sig-bedrock-1"), ("text", None)
    ]  # fmt: skip
    sent = service.received[-1].body
    assert sent["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": 2048}}
    assert sent["inferenceConfig"]["maxTokens"] > 2048  # room to answer beyond the budget
    # The signed reasoning goes back in the history; the next turn is accepted as Converse requires.
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]},
                 {"role": "user", "content": "and now?"}]  # fmt: skip
    again = await client.messages.create(model="sonnet", max_tokens=1024, thinking=thinking, messages=messages)
    assert again.content[-1].type == "text" and service.received[-1].problem is None


async def test_a_request_bedrock_refuses_comes_back_with_its_message(
    aiohttp_server, start_proxy, tmp_path: Path
) -> None:
    service, url = await start_bedrock(aiohttp_server)
    running = await start_proxy(base_config(bedrock=[bedrock(url, **key_files(tmp_path, "k", service.issue()))]))
    with pytest.raises(openai.BadRequestError, match=r"temperature: 1\.5 is outside \[0, 1\]"):
        await running.client().chat.completions.create(
            model="sonnet", messages=[{"role": "user", "content": "x"}], temperature=1.5
        )
    assert len(service.received) == 1  # the request's fault: no other credential is tried


async def test_bedrock_counts_an_anthropic_clients_tokens(aiohttp_server, start_proxy, tmp_path: Path) -> None:
    service, url = await start_bedrock(aiohttp_server)
    running = await start_proxy(base_config(bedrock=[bedrock(url, **key_files(tmp_path, "k", service.issue()))]))
    client = anthropic.AsyncAnthropic(base_url=running.url, api_key=CLIENT_KEY, max_retries=0)
    counted = await client.messages.count_tokens(model="sonnet", system="Be brief.",
                                                 messages=[{"role": "user", "content": "count me"}])  # fmt: skip
    assert counted.input_tokens > 0
    assert service.received[-1].action == "count-tokens" and service.received[-1].problem is None
    assert service.received[-1].body["input"]["converse"]["system"] == [{"text": "Be brief."}]


async def test_no_aws_keys_anywhere_is_a_502_that_says_so(
    aiohttp_server, start_proxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The config still loads (the keys may appear: an IRSA token file a moment late); requests look again."""
    service, url = await start_bedrock(aiohttp_server)
    isolate(monkeypatch, tmp_path)
    running = await start_proxy(base_config(bedrock=[bedrock(url)]))
    with pytest.raises(openai.APIStatusError) as failed:
        await running.client().chat.completions.create(model="sonnet", messages=[{"role": "user", "content": "x"}])
    assert failed.value.status_code == 502
    assert failed.value.body["code"] == "upstream_token_unavailable"  # type: ignore[index]
    assert not service.received
    access, secret, token = service.issue()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token or "")
    answer = await running.client().chat.completions.create(model="sonnet", messages=[{"role": "user", "content": "y"}])
    assert answer.choices[0].message.content == "echo: y"


@pytest.mark.parametrize("identity", ["eks-pod-identity", "irsa"])
async def test_a_pods_kubernetes_identity_signs_and_is_renewed_before_it_expires(
    identity: str, aiohttp_server, start_proxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The default chain as a pod on EKS sees it: the Pod Identity agent (container credentials), or IRSA's web
    identity exchanged at STS. Keys that live ten minutes are within botocore's refresh window: each request
    renews them first, in a thread, and the renewed keys sign."""
    service, url = await start_bedrock(aiohttp_server, identity_ttl=600)
    isolate(monkeypatch, tmp_path)
    (tmp_path / "token").write_text(service.pod_token)
    if identity == "eks-pod-identity":
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{url}/pod-identity")
        monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(tmp_path / "token"))
    else:
        monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/bedrock-gateway")
        monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(tmp_path / "token"))
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", f"{url}/sts")
    async with asyncio.timeout(30):  # a generous bound: finding keys on the loop would wait on this very loop
        running = await start_proxy(base_config(bedrock=[bedrock(url)]))
    client = running.client()
    for text in ("one", "two"):
        answer = await client.chat.completions.create(model="sonnet", messages=[{"role": "user", "content": text}])
        assert answer.choices[0].message.content == f"echo: {text}"
    used = {r.headers["Authorization"].split("/")[0].split("=")[1] for r in service.received}
    assert len(used) == 2 and all(r.problem is None for r in service.received)  # renewed keys signed the second
    assert set(service.identity_calls) == {"pod-identity" if identity == "eks-pod-identity" else "sts"}
