"""A fake AWS Bedrock runtime: Converse, ConverseStream, CountTokens and InvokeModel (Titan and Cohere embeddings).

It is strict where the real service is:

* **Signing.** Every call must carry a SigV4 signature for service ``bedrock`` in the fake's region, made with
  keys it issued (else 403 ``UnrecognizedClientException``), whose session token is current (else 403
  ``ExpiredTokenException``), dated within five minutes, and matching the request as received: the signature is
  recomputed with botocore's ``SigV4Auth`` from the raw path, the signed headers and the body bytes that arrived
  (else 403 ``InvalidSignatureException``).
* **Shapes.** Converse bodies are checked against botocore's own ``bedrock-runtime`` service model: unknown
  members, missing required ones, unions with other than one member, enums, lengths, ranges, patterns, blobs
  that are not base64. A bad body gets 400 ``ValidationException`` and is recorded with the problem. InvokeModel
  bodies are checked against the Titan and Cohere embedding models' documented parameters.
* **Wire.** Answers are Bedrock's: JSON with ``x-amzn-ErrorType`` on errors, and for streams
  ``application/vnd.amazon.eventstream`` frames (correct CRCs, the ``p`` padding field real events carry).

The model echoes the last user text (and says what images it saw); when tools are offered and the last user turn
holds no tool result it calls the first tool; with Claude's ``thinking`` asked for it reasons first.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hmac
import itertools
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from botocore.loaders import Loader

from cliproxy_proxy.translate.eventstream import event, exception

REGION = "us-east-1"
SERVICE = "bedrock"
SKEW = 300.0  # seconds a signature's date may differ from the fake's clock
SHAPES: dict[str, Any] = Loader().load_service_model("bedrock-runtime", "service-2")["shapes"]
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})")  # fmt: skip
TITAN_DIMENSIONS = frozenset({256, 512, 1024})
COHERE_INPUT_TYPES = frozenset({"search_document", "search_query", "classification", "clustering"})


class Problem(Exception):
    """A request the real service refuses with 400 ValidationException."""


# -- validation against the service model ---------------------------------------------------------------


def validate(shape_name: str, value: Any, where: str = "") -> None:
    """Raises Problem when ``value`` (decoded JSON) is not what the shape allows on the wire."""
    shape = SHAPES[shape_name]
    kind = shape["type"]
    if kind == "structure":
        if shape.get("document"):
            return
        if not isinstance(value, dict):
            raise Problem(f"{where or 'body'}: expected an object")
        members = {name: m for name, m in shape["members"].items() if "location" not in m}  # uri/header: not body
        unknown = sorted(set(value) - set(members))
        if unknown:
            raise Problem(f"{where or 'body'}: unknown member(s) {unknown}")
        for name in shape.get("required", []):
            if name in members and name not in value:
                raise Problem(f"{where or 'body'}: missing required member {name!r}")
        if shape.get("union") and len(value) != 1:
            raise Problem(f"{where or 'body'}: exactly one member of the union must be set, not {sorted(value)}")
        for name, item in value.items():
            validate(members[name]["shape"], item, f"{where}.{name}" if where else name)
    elif kind == "list":
        if not isinstance(value, list):
            raise Problem(f"{where}: expected a list")
        _length(shape, len(value), where)
        for index, item in enumerate(value):
            validate(shape["member"]["shape"], item, f"{where}[{index}]")
    elif kind == "map":
        if not isinstance(value, dict):
            raise Problem(f"{where}: expected a map")
        for key, item in value.items():
            validate(shape["value"]["shape"], item, f"{where}.{key}")
    elif kind == "string":
        if not isinstance(value, str):
            raise Problem(f"{where}: expected a string")
        if "enum" in shape and value not in shape["enum"]:
            raise Problem(f"{where}: {value!r} is not one of {shape['enum']}")
        _length(shape, len(value), where)
        if "pattern" in shape and not re.fullmatch(shape["pattern"], value):
            raise Problem(f"{where}: does not match {shape['pattern']}")
    elif kind in ("integer", "long", "float", "double"):
        whole = kind in ("integer", "long")
        if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
            raise Problem(f"{where}: expected a number ({kind})")
        if ("min" in shape and value < shape["min"]) or ("max" in shape and value > shape["max"]):
            raise Problem(f"{where}: {value} is outside [{shape.get('min')}, {shape.get('max')}]")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise Problem(f"{where}: expected a boolean")
    elif kind == "blob":
        try:
            raw = base64.b64decode(value, validate=True) if isinstance(value, str) else None
        except binascii.Error:
            raw = None
        if raw is None:
            raise Problem(f"{where}: expected base64 bytes")
        _length(shape, len(raw), where)


def _length(shape: dict[str, Any], size: int, where: str) -> None:
    if ("min" in shape and size < shape["min"]) or ("max" in shape and size > shape["max"]):
        raise Problem(f"{where}: length {size} is outside [{shape.get('min')}, {shape.get('max')}]")


def conversation_rules(body: dict[str, Any]) -> None:
    """What the service checks beyond the shapes: alternation, tool pairing, the tool config tool blocks need."""
    messages = body.get("messages") or []
    if not messages or messages[0]["role"] != "user":
        raise Problem("A conversation must start with a user message.")
    for before, after in itertools.pairwise(messages):
        if before["role"] == after["role"]:
            raise Problem("A conversation must alternate between user and assistant roles.")
    uses = [b for m in messages for b in m["content"] if "toolUse" in b or "toolResult" in b]
    if uses and "toolConfig" not in body:
        raise Problem("The toolConfig field must be defined when using toolUse and toolResult content blocks.")
    for index, message in enumerate(messages):
        for block in message["content"]:
            if "text" in block and not block["text"].strip():
                raise Problem(f"messages.{index}: The text field in the ContentBlock object is blank.")
            if "toolResult" in block:
                previous = messages[index - 1]["content"] if index else []
                calls = {b["toolUse"]["toolUseId"] for b in previous if "toolUse" in b}
                if message["role"] != "user" or block["toolResult"]["toolUseId"] not in calls:
                    raise Problem("A toolResult block must answer a toolUse of the assistant turn before it.")


def _embedding_rules(model: str, body: Any) -> None:
    if not isinstance(body, dict):
        raise Problem("Malformed input request: expected a JSON object")
    if "cohere.embed" in model:
        allowed = {"texts", "input_type", "truncate", "embedding_types", "output_dimension", "images"}
        texts = body.get("texts")
        if not isinstance(texts, list) or not 1 <= len(texts) <= 96 or not all(isinstance(t, str) for t in texts):
            raise Problem("Malformed input request: texts must be a list of 1 to 96 strings")
        if body.get("input_type") not in COHERE_INPUT_TYPES:
            raise Problem("Malformed input request: input_type is required and must be a known type")
        if "output_dimension" in body and ("v4" not in model or body["output_dimension"] not in {256, 512, 1024, 1536}):
            raise Problem("Malformed input request: output_dimension is not accepted")
    else:
        allowed = {"inputText", "dimensions", "normalize", "embeddingTypes"}
        if not isinstance(body.get("inputText"), str) or not body["inputText"]:
            raise Problem("Malformed input request: inputText must be a non-empty string")
        if "dimensions" in body and body["dimensions"] not in TITAN_DIMENSIONS:
            raise Problem("Malformed input request: dimensions must be 256, 512 or 1024")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Problem(f"Malformed input request: extraneous key(s) {unknown} are not permitted")


# -- the service ----------------------------------------------------------------------------------------


@dataclass
class Keys:
    secret: str = field(repr=False)
    token: str | None = field(repr=False)
    expires: float


@dataclass
class Received:
    path: str
    model: str
    action: str
    headers: dict[str, str]
    body: Any
    problem: str | None = None


@dataclass
class Fault:
    """What the next call does instead of answering: an HTTP error, or an exception mid-stream."""

    status: int = 429
    kind: str = "ThrottlingException"
    message: str = "Too many requests, please wait before trying again."
    in_stream: bool = False  # sent as an exception frame after the first text event (streams only)


@dataclass
class BedrockService:
    region: str = REGION
    words_per_event: int = 2
    json_chunk: int = 7
    keys: dict[str, Keys] = field(default_factory=dict, repr=False)
    received: list[Received] = field(default_factory=list)
    faults: deque[Fault] = field(default_factory=deque)
    pod_token: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)  # the pod's projected token
    identity_ttl: float = 3600.0  # how long keys from Pod Identity or STS live
    identity_calls: list[str] = field(default_factory=list)
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    def issue(self, ttl: float = 3600.0, *, session: bool = True) -> tuple[str, str, str | None]:
        """New keys: an access key id, its secret and (``session``) a session token, valid ``ttl`` seconds."""
        number = next(self._counter)
        access = f"ASIAFAKE{number:012d}" if session else f"AKIAFAKE{number:012d}"
        secret, token = secrets.token_urlsafe(30), (secrets.token_urlsafe(60) if session else None)
        self.keys[access] = Keys(secret, token, time.time() + ttl)
        return access, secret, token


BEDROCK_SERVICE = web.AppKey("bedrock_service", BedrockService)


def _error(status: int, kind: str, message: str) -> web.Response:
    headers = {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/",
               "x-amzn-RequestId": secrets.token_hex(16)}  # fmt: skip
    return web.json_response({"message": message}, status=status, headers=headers)


def check_signature(service: BedrockService, request: web.Request, body: bytes) -> web.Response | None:
    """None when the request is signed as SigV4 requires, else the 403 Bedrock answers."""
    match = _AUTH.fullmatch(request.headers.get("Authorization", ""))
    if match is None:
        return _error(403, "AccessDeniedException", "Authorization header requires a SigV4 signature.")
    access, day, region, name, signed, signature = match.groups()
    keys = service.keys.get(access)
    if keys is None:
        return _error(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
    if keys.token is not None and request.headers.get("X-Amz-Security-Token") != keys.token:
        return _error(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
    if keys.expires < time.time():
        return _error(403, "ExpiredTokenException", "The security token included in the request is expired")
    if region != service.region or name != SERVICE:
        return _error(403, "InvalidSignatureException", f"Credential should be scoped to a valid region "
                      f"({service.region}) and service ({SERVICE}).")  # fmt: skip
    stamp = request.headers.get("X-Amz-Date", "")
    try:
        moment = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return _error(403, "InvalidSignatureException", "The request must carry a valid X-Amz-Date.")
    if abs(moment.timestamp() - time.time()) > SKEW or not stamp.startswith(day):
        return _error(403, "InvalidSignatureException", "Signature expired: the request date is out of range.")
    names = signed.split(";")
    if "host" not in names or "x-amz-date" not in names:
        return _error(403, "InvalidSignatureException", "host and x-amz-date must be signed.")
    headers = {n: request.headers.get(n, "") for n in names}
    replay = AWSRequest(method=request.method, url=f"http://{request.host}{request.raw_path}", headers=headers,
                        data=body)  # fmt: skip
    replay.context["timestamp"] = stamp
    signer = SigV4Auth(ReadOnlyCredentials(access, keys.secret, keys.token), SERVICE, region)
    canonical = signer.canonical_request(replay)
    expected = signer.signature(signer.string_to_sign(replay, canonical), replay)
    if signer.signed_headers(signer.headers_to_sign(replay)) != signed or not hmac.compare_digest(expected, signature):
        return _error(403, "InvalidSignatureException", "The request signature we calculated does not match the "
                      "signature you provided. Check your AWS Secret Access Key and signing method.")  # fmt: skip
    return None


def _last_user(body: dict[str, Any]) -> list[dict[str, Any]]:
    return next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), [])


def _reply_text(content: list[dict[str, Any]]) -> str:
    words = [b["text"] for b in content if "text" in b]
    for block in content:
        if "image" in block:
            size = len(base64.b64decode(block["image"]["source"]["bytes"]))
            words.append(f"[image/{block['image']['format']} {size} bytes]")
    return "echo: " + " ".join(words)


def _arguments(schema: dict[str, Any]) -> dict[str, Any]:
    samples = {"string": "Paris", "integer": 1, "number": 1.5, "boolean": True}
    properties = schema.get("properties") or {}
    return {name: samples.get(properties[name].get("type")) for name in schema.get("required", [])
            if name in properties}  # fmt: skip


def _answer(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The content blocks the model answers with, and its stop reason."""
    blocks: list[dict[str, Any]] = []
    thinking = (body.get("additionalModelRequestFields") or {}).get("thinking") or {}
    if thinking.get("type") == "enabled":
        blocks.append({"reasoningContent": {"reasoningText": {"text": "Let me think.", "signature": "sig-bedrock-1"}}})
    content = _last_user(body)
    tools = (body.get("toolConfig") or {}).get("tools") or []
    if tools and not any("toolResult" in b for b in content):
        spec = tools[0]["toolSpec"]
        use = {"toolUseId": f"tooluse_{secrets.token_hex(8)}", "name": spec["name"],
               "input": _arguments(spec["inputSchema"]["json"])}  # fmt: skip
        return [*blocks, {"toolUse": use}], "tool_use"
    return [*blocks, {"text": _reply_text(content)}], "end_turn"


def _usage(body: dict[str, Any], blocks: list[dict[str, Any]]) -> dict[str, int]:
    prompt = len(orjson.dumps(body.get("messages"))) // 4 + 1
    output = len(orjson.dumps(blocks)) // 4 + 1
    return {"inputTokens": prompt, "outputTokens": output, "totalTokens": prompt + output}


def _pad() -> str:
    return "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0"[: secrets.randbelow(40) + 1]


async def handle(request: web.Request) -> web.StreamResponse:
    service = request.app[BEDROCK_SERVICE]
    raw = await request.read()
    refused = check_signature(service, request, raw)
    model, action = request.match_info["model"], request.match_info["action"]
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    received = Received(request.path, model, action, dict(request.headers), body)
    service.received.append(received)
    if refused is not None:
        received.problem = "signature"
        return refused
    try:
        if request.content_type != "application/json":
            raise Problem("Content-Type must be application/json")
        if action == "invoke":
            _embedding_rules(model, body)
        elif action == "count-tokens":
            validate("CountTokensRequest", body)
            conversation_rules(body["input"].get("converse") or {"messages": []})
        else:
            validate("ConverseStreamRequest" if action == "converse-stream" else "ConverseRequest", body)
            conversation_rules(body)
    except Problem as problem:
        received.problem = str(problem)
        return _error(400, "ValidationException", str(problem))
    fault = service.faults.popleft() if service.faults else None
    if fault is not None and not fault.in_stream:
        return _error(fault.status, fault.kind, fault.message)
    if action == "invoke":
        return web.json_response(_embeddings(model, body))
    if action == "count-tokens":
        return web.json_response({"inputTokens": _usage(body["input"]["converse"], [])["inputTokens"]})
    blocks, stop = _answer(body)
    usage = _usage(body, blocks)
    if action == "converse":
        message = {"role": "assistant", "content": blocks}
        return web.json_response({"output": {"message": message}, "stopReason": stop, "usage": usage,
                                  "metrics": {"latencyMs": 12}})  # fmt: skip
    response = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream"})
    await response.prepare(request)
    for frame in stream_frames(service, blocks, stop, usage, fault):
        await response.write(frame)
    await response.write_eof()
    return response


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return event(kind, orjson.dumps({**payload, "p": _pad()}))


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return _event("contentBlockDelta", {"contentBlockIndex": index, "delta": delta})


def stream_frames(service: BedrockService, blocks: list[dict[str, Any]], stop: str, usage: dict[str, int],
            fault: Fault | None) -> list[bytes]:  # fmt: skip
    frames = [_event("messageStart", {"role": "assistant"})]
    for index, block in enumerate(blocks):
        if "reasoningContent" in block:
            reasoning = block["reasoningContent"]["reasoningText"]
            frames.append(_delta(index, {"reasoningContent": {"text": reasoning["text"]}}))
            frames.append(_delta(index, {"reasoningContent": {"signature": reasoning["signature"]}}))
        elif "toolUse" in block:
            use = block["toolUse"]
            start = {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}
            frames.append(_event("contentBlockStart", {"contentBlockIndex": index, "start": start}))
            text = orjson.dumps(use["input"]).decode()
            for at in range(0, len(text), service.json_chunk):
                frames.append(_delta(index, {"toolUse": {"input": text[at : at + service.json_chunk]}}))
        else:
            words, step = block["text"].split(" "), service.words_per_event
            for at in range(0, len(words), step):
                frames.append(_delta(index, {"text": " ".join(words[at : at + step]) + " " * (at + step < len(words))}))
                if fault is not None:
                    name = fault.kind[0].lower() + fault.kind[1:]
                    return [*frames, exception(name, orjson.dumps({"message": fault.message}))]
        frames.append(_event("contentBlockStop", {"contentBlockIndex": index}))
    frames.append(_event("messageStop", {"stopReason": stop}))
    frames.append(_event("metadata", {"usage": usage, "metrics": {"latencyMs": 12}}))
    return frames


def _embeddings(model: str, body: dict[str, Any]) -> dict[str, Any]:
    def vector(text: str, size: int) -> list[float]:
        seed = sum(text.encode()) or 1
        return [((seed * (i + 1)) % 97) / 97 - 0.5 for i in range(size)]

    if "cohere.embed" in model:
        size = body.get("output_dimension", 1024)
        return {"id": secrets.token_hex(8), "response_type": "embeddings_floats", "texts": body["texts"],
                "embeddings": [vector(t, size) for t in body["texts"]]}  # fmt: skip
    values = vector(body["inputText"], body.get("dimensions", 1024))
    return {"embedding": values, "embeddingsByType": {"float": values},
            "inputTextTokenCount": len(body["inputText"].split())}  # fmt: skip


# -- the identities a pod signs as -----------------------------------------------------------------------


def _stamp(ttl: float) -> str:
    return datetime.datetime.fromtimestamp(time.time() + ttl, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def pod_identity(request: web.Request) -> web.Response:
    """The EKS Pod Identity agent (botocore's container provider): the pod's projected token, then keys."""
    service = request.app[BEDROCK_SERVICE]
    service.identity_calls.append("pod-identity")
    if request.headers.get("Authorization") != service.pod_token:
        return web.json_response({"message": "invalid token"}, status=401)
    access, secret, token = service.issue(service.identity_ttl)
    return web.json_response({"AccessKeyId": access, "SecretAccessKey": secret, "Token": token,
                              "AccountId": "123456789012", "Expiration": _stamp(service.identity_ttl)})  # fmt: skip


async def sts(request: web.Request) -> web.Response:
    """STS ``AssumeRoleWithWebIdentity`` (IRSA): the service account's token for a role's keys, in STS's XML."""
    service = request.app[BEDROCK_SERVICE]
    service.identity_calls.append("sts")
    form = await request.post()
    if form.get("Action") != "AssumeRoleWithWebIdentity" or form.get("WebIdentityToken") != service.pod_token:
        return web.Response(status=403, content_type="text/xml", text=(
            "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>"
            "<Message>Couldn't verify the token</Message></Error></ErrorResponse>"))  # fmt: skip
    access, secret, token = service.issue(service.identity_ttl)
    return web.Response(
        content_type="text/xml",
        text=(
            '<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            "<AssumeRoleWithWebIdentityResult><Credentials>"
            f"<AccessKeyId>{access}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>"
            f"<SessionToken>{token}</SessionToken><Expiration>{_stamp(service.identity_ttl)}</Expiration>"
            f"</Credentials><AssumedRoleUser><Arn>{form.get('RoleArn')}/{form.get('RoleSessionName')}</Arn>"
            "<AssumedRoleId>AROAFAKE:session</AssumedRoleId></AssumedRoleUser></AssumeRoleWithWebIdentityResult>"
            "<ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>"
        ),
    )


def create_bedrock_app(service: BedrockService) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[BEDROCK_SERVICE] = service
    app.router.add_post(r"/model/{model:.+}/{action:converse|converse-stream|invoke|count-tokens}", handle)
    app.router.add_get("/pod-identity", pod_identity)
    app.router.add_post("/sts", sts)
    return app


async def start_bedrock(aiohttp_server: Callable[..., Awaitable[TestServer]], **options: Any
                        ) -> tuple[BedrockService, str]:  # fmt: skip
    """Serves the fake on loopback; the URL stands for ``https://bedrock-runtime.{region}.amazonaws.com``."""
    service = BedrockService(**options)
    server = await aiohttp_server(create_bedrock_app(service))
    return service, str(server.make_url("")).rstrip("/")
