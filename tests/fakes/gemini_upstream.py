"""A fake Gemini API, and Vertex AI in API-key express mode: Google's paths, keys, errors and wire format.

It is not a model. It validates each request as the real API does (google-genai's pydantic types for the shapes,
which forbid unknown fields and check base64, plus hand checks for the rules the types do not carry: roles, the
function-call turn rules, Gemini's schema subset), then echoes the last user text, or calls the first declared
function when tools are declared and the last turn is not a function response. Words count as tokens.

Faults are queued per key, as in the demo upstream: an error status (Google's error JSON), a delay, a stream cut
or an in-stream error event after some events.
"""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

try:  # google-genai's own types validate the shapes; without it the hand checks still run
    from google.genai import types as genai_types
except ImportError:  # pragma: no cover
    genai_types = None  # type: ignore[assignment]

GEMINI_KEY = "gemini-key"

_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}  # fmt: skip
_GEMINI_VERSIONS = ("v1", "v1beta", "v1alpha")
_ACTIONS = ("generateContent", "streamGenerateContent", "countTokens")
_VERTEX_VERSIONS = ("v1", "v1beta1")
_TOP_LEVEL = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "safetySettings",
              "cachedContent", "model"}  # fmt: skip
_DATA_FIELDS = ("text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
                "codeExecutionResult")  # fmt: skip
# Gemini's Schema (an OpenAPI 3.0 subset); Vertex also takes additionalProperties, defs and ref.
_SCHEMA_KEYS = {"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
                "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "anyOf",
                "propertyOrdering", "default", "items", "minimum", "maximum"}  # fmt: skip
_VERTEX_SCHEMA_KEYS = _SCHEMA_KEYS | {"additionalProperties", "defs", "ref"}
_TYPES = {"TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"}
_STRING_FORMATS = {"enum", "date-time"}
_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")


@dataclass
class GeminiFault:
    """What the next request with a given key meets instead of a normal answer."""

    status: int | None = None
    message: str = "Resource has been exhausted (e.g. check quota)."
    body: Any = None  # replaces Google's error JSON when set
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop_after: int | None = None  # streams: cut the connection after this many events
    error_after: int | None = None  # streams: an in-stream error event after this many events


@dataclass
class GeminiReceived:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]
    model: str
    action: str
    vertex: bool

    @property
    def key(self) -> str:
        """The API key, or on Vertex's project paths the OAuth access token (``Authorization: Bearer``)."""
        bearer = self.headers.get("authorization", self.headers.get("Authorization", "")).removeprefix("Bearer ")
        return self.headers.get("x-goog-api-key", self.query.get("key", "")) or bearer

    @property
    def stream(self) -> bool:
        return self.action == "streamGenerateContent"


@dataclass
class GeminiUpstream:
    """The fake's state: accepted keys and models, what it received, the faults it owes and how it answers."""

    keys: frozenset[str] = frozenset({GEMINI_KEY})
    models: tuple[str, ...] | None = None  # None serves any model name
    received: list[GeminiReceived] = field(default_factory=list)
    faults: dict[str, deque[GeminiFault]] = field(default_factory=dict)
    words_per_chunk: int = 2
    call_ids: bool = False  # put ids on functionCall parts (newer models do)
    require_signatures: bool = False  # Gemini 3: an unsigned first function call in a model turn is a 400
    invalid_key_status: int = 400  # the real Gemini API answers a wrong key with 400 INVALID_ARGUMENT
    #: Vertex's project paths: whether an access token is current (an identity fake's); None: ``keys`` decide.
    tokens: Callable[[str], bool] | None = None

    def fail_next(self, key: str, *faults: GeminiFault) -> None:
        """Queue faults for requests with ``key`` (``*`` for any key)."""
        self.faults.setdefault(key, deque()).extend(faults)

    def _fault_for(self, key: str) -> GeminiFault | None:
        for name in (key, "*"):
            queue = self.faults.get(name)
            if queue:
                return queue.popleft()
        return None

    @property
    def last(self) -> GeminiReceived:
        return self.received[-1]


GEMINI_UPSTREAM = web.AppKey("gemini_upstream", GeminiUpstream)


def google_error(status: int, message: str, reason: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}
    if reason:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                             "domain": "googleapis.com"}]  # fmt: skip
    return {"error": error}


def _error(status: int, message: str, reason: str | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(google_error(status, message, reason)),
                        content_type="application/json")  # fmt: skip


# -- validation -----------------------------------------------------------------------------------------

#: Maps whose keys are names or data (property names, call arguments), not fields: never respelled.
_MAX_DEPTH = 100
_DATA_MAPS = {"properties", "args", "response", "labels", "default", "example"}


def _too_deep(value: Any) -> bool:
    """Google's JSON parser refuses messages nested deeper than its recursion limit."""
    level = [value]
    for _ in range(_MAX_DEPTH):
        level = [c for node in level if isinstance(node, dict | list)
                 for c in (node.values() if isinstance(node, dict) else node)]  # fmt: skip
    return bool(level)


def camelized(value: Any, parent: str = "") -> Any:
    """The body with every field in its JSON spelling: Google also accepts proto names (``thinking_budget``), and
    google-genai sends some (inside ``thinkingConfig``); the hand checks and the answers read one spelling."""
    if isinstance(value, list):
        return [camelized(item, parent) for item in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        name = key if parent in _DATA_MAPS else re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)
        out[name] = camelized(item, name)
    return out


def _model_check(model: Any, payload: Any, where: str, errors: list[str]) -> None:
    """Shape check by google-genai's pydantic type, in JSON mode so base64 and unknown fields are checked."""
    if genai_types is None:
        return
    try:
        model.model_validate_json(orjson.dumps(payload))
    except Exception as exc:  # pydantic.ValidationError, reported as the API words it
        for problem in getattr(exc, "errors", lambda: [])() or [{"loc": (), "msg": str(exc)}]:
            loc = ".".join(str(p) for p in problem["loc"])
            if problem.get("type") == "extra_forbidden":
                errors.append(f'Invalid JSON payload received. Unknown name "{problem["loc"][-1]}" at '
                              f"'{where}': Cannot find field.")  # fmt: skip
            else:
                errors.append(f"Invalid value at '{where}.{loc}': {problem['msg']}")


def _check_part(part: Any, where: str, errors: list[str], vertex: bool) -> None:
    if not isinstance(part, dict):
        errors.append(f"{where}: must be an object")
        return
    present = [name for name in _DATA_FIELDS if name in part]
    if not present:
        errors.append(f"{where}: required oneof field 'data' must have one initialized field")
    elif len(present) > 1:
        errors.append(f"{where}: oneof field 'data' is already set. Cannot set '{present[1]}'")
    if part.get("text") == "" and "thoughtSignature" not in part:
        errors.append("Unable to submit request because it has an empty text parameter. Add a value to the "
                      "parameter and try again.")  # fmt: skip
    for name, label in (("functionCall", "function_call"), ("functionResponse", "function_response")):
        if isinstance(part.get(name), dict) and "id" in part[name]:  # as observed on both APIs
            errors.append(
                f"Invalid JSON payload received. Unknown name \"id\" at '{where}.{label}': Cannot find field."
            )


def _check_contents(contents: Any, errors: list[str], vertex: bool, signatures: bool) -> None:
    if not isinstance(contents, list) or not contents:
        errors.append("* GenerateContentRequest.contents: contents is not specified")
        return
    for index, content in enumerate(contents):
        where = f"contents[{index}]"
        if not isinstance(content, dict):
            continue
        if content.get("role") not in ("user", "model"):
            errors.append(f"Please use a valid role: user, model. (got {content.get('role')!r} at {where})")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            errors.append(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
            continue
        for number, part in enumerate(parts):
            _check_part(part, f"{where}.parts[{number}]", errors, vertex)
    _check_turns([c for c in contents if isinstance(c, dict) and isinstance(c.get("parts"), list)], errors, signatures)


def _check_turns(contents: list[dict[str, Any]], errors: list[str], signatures: bool) -> None:
    """The function-call turn rules Gemini enforces."""
    for index, content in enumerate(contents):
        calls = [p for p in content["parts"] if isinstance(p, dict) and isinstance(p.get("functionCall"), dict)]
        if content.get("role") != "model" or not calls:
            continue
        if index == 0 or contents[index - 1].get("role") != "user":
            errors.append("Please ensure that function call turn comes immediately after a user turn or after a "
                          "function response turn.")  # fmt: skip
        if signatures and "thoughtSignature" not in calls[0]:
            errors.append(f"Function call is missing a thought_signature in functionCall parts. This is required for "
                          f"tools to work correctly (contents[{index}].parts).")  # fmt: skip
        if index + 1 < len(contents):
            answer = contents[index + 1]
            responses = [p["functionResponse"] for p in answer["parts"]
                         if isinstance(p, dict) and isinstance(p.get("functionResponse"), dict)]  # fmt: skip
            if answer.get("role") != "user" or len(responses) != len(calls):
                errors.append("Please ensure that the number of function response parts is equal to the number of "
                              "function call parts of the function call turn.")  # fmt: skip
            elif Counter(repr(r.get("name")) for r in responses) != Counter(repr(c["functionCall"].get("name"))
                                                                             for c in calls):  # fmt: skip
                errors.append("Please ensure that function response names match the function call names.")


def _check_schema(schema: Any, where: str, errors: list[str], vertex: bool, top: bool = False) -> None:
    if not isinstance(schema, dict):
        errors.append(f"{where}: must be an object")
        return
    for key in set(schema) - (_VERTEX_SCHEMA_KEYS if vertex else _SCHEMA_KEYS):
        errors.append(f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field.")
    kind = str(schema.get("type", "TYPE_UNSPECIFIED")).upper()
    if kind not in _TYPES:
        errors.append(f"Invalid value at '{where}.type' (type.googleapis.com/google.ai.generativelanguage.v1beta.Type),"
                      f" \"{schema.get('type')}\"")  # fmt: skip
    properties = schema.get("properties")
    if kind == "OBJECT" and top and not properties:
        errors.append(f"* GenerateContentRequest.{where}.properties: should be non-empty for OBJECT type")
    if kind == "ARRAY" and "items" not in schema:
        errors.append(f"* GenerateContentRequest.{where}.items: missing field.")
    if "enum" in schema and kind not in ("STRING", "TYPE_UNSPECIFIED"):
        errors.append(f"* GenerateContentRequest.{where}: function declaration enum only allowed for STRING type")
    if kind == "STRING" and "format" in schema and schema["format"] not in _STRING_FORMATS and not vertex:
        errors.append(f"* GenerateContentRequest.{where}.format: only 'enum' and 'date-time' are supported for "
                      f"STRING type")  # fmt: skip
    for name in schema.get("required") or []:
        if not isinstance(properties, dict) or name not in properties:
            errors.append(f"* GenerateContentRequest.{where}.required[{name}]: property is not defined")
    if isinstance(properties, dict):
        for name, sub in properties.items():
            _check_schema(sub, f"{where}.properties[{name}]", errors, vertex)
    if "items" in schema:
        _check_schema(schema["items"], f"{where}.items", errors, vertex)
    for number, sub in enumerate(schema.get("anyOf") or []):
        _check_schema(sub, f"{where}.any_of[{number}]", errors, vertex)


def _check_tools(body: dict[str, Any], errors: list[str], vertex: bool) -> set[str]:
    names: set[str] = set()
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        errors.append("tools: must be a list")
        return names
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if genai_types is not None:
            _model_check(genai_types.Tool, tool, where, errors)
        for number, declaration in enumerate((tool or {}).get("functionDeclarations") or []):
            here = f"{where}.function_declarations[{number}]"
            name = declaration.get("name")
            if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
                errors.append(f"* GenerateContentRequest.{here}.name: Invalid function name. Must start with a letter "
                              f"or an underscore. Must be a-z, A-Z, 0-9, or contain underscores, dots, colons and "
                              f"dashes, with a maximum length of 64.")  # fmt: skip
            elif name in names:
                errors.append(f"* GenerateContentRequest.{here}: Duplicate function declaration found: {name}")
            names.add(str(name))
            if "parameters" in declaration and "parametersJsonSchema" in declaration:
                errors.append(f"* GenerateContentRequest.{here}: parameters and parameters_json_schema are exclusive")
            if "parameters" in declaration:
                _check_schema(declaration["parameters"], f"{here}.parameters", errors, vertex, top=True)
    return names


def _check_tool_config(config: Any, declared: set[str], errors: list[str]) -> None:
    if genai_types is not None:
        _model_check(genai_types.ToolConfig, config, "tool_config", errors)
    calling = (config or {}).get("functionCallingConfig") or {}
    allowed = calling.get("allowedFunctionNames")
    if allowed and calling.get("mode") != "ANY":
        errors.append("* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: only "
                      "allowed when mode is ANY")  # fmt: skip
    for name in allowed or []:
        if name not in declared:
            errors.append(f"* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: "
                          f"{name} is not a declared function")  # fmt: skip


def _check_generation(config: Any, errors: list[str]) -> None:
    if genai_types is not None:
        _model_check(genai_types.GenerationConfig, config, "generation_config", errors)
    if not isinstance(config, dict):
        return
    thinking = config.get("thinkingConfig") or {}
    if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
        errors.append("You can only set only one of thinking budget and thinking level.")
    if isinstance(thinking.get("thinkingBudget"), int) and thinking["thinkingBudget"] < -1:
        errors.append("* GenerateContentRequest.generation_config.thinking_config.thinking_budget: must be >= -1")
    if config.get("responseSchema") is not None and config.get("responseMimeType") != "application/json":
        errors.append("* GenerateContentRequest.generation_config.response_schema: needs application/json")
    if len(config.get("stopSequences") or []) > 5:
        errors.append("* GenerateContentRequest.generation_config.stop_sequences: at most 5 stop sequences")
    for name, low, high in (("temperature", 0, 2), ("topP", 0, 1), ("maxOutputTokens", 1, 1 << 31)):
        value = config.get(name, low)
        if not isinstance(value, int | float) or not low <= value <= high:  # the types report the wrong kinds
            errors.append(f"* GenerateContentRequest.generation_config.{name}: must be in [{low}, {high}]")


def validate_generate_content(body: Any, *, vertex: bool = False, signatures: bool = False) -> list[str]:
    """What the real API would object to in a generateContent body; empty when it would accept it."""
    try:
        return _objections(body, vertex, signatures)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError):  # Google's typed parser refuses it first
        return ["Invalid JSON payload received. A field has a value of the wrong type."]


def _objections(body: Any, vertex: bool, signatures: bool) -> list[str]:
    if not isinstance(body, dict):
        return ["Invalid JSON payload received. Expected an object."]
    errors: list[str] = []
    allowed = _TOP_LEVEL | {"labels"} if vertex else _TOP_LEVEL
    for key in body:
        if camelized({key: None}).keys() - allowed:
            errors.append(f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.')
    if genai_types is not None:
        contents = body.get("contents")
        for index, content in enumerate(contents if isinstance(contents, list) else []):
            _model_check(genai_types.Content, content, f"contents[{index}]", errors)
    body = camelized(body)
    _check_contents(body.get("contents"), errors, vertex, signatures)
    if "systemInstruction" in body:
        if genai_types is not None:
            _model_check(genai_types.Content, body["systemInstruction"], "system_instruction", errors)
        for part in (body["systemInstruction"] or {}).get("parts") or []:
            if not isinstance(part, dict) or set(part) != {"text"}:
                errors.append("* GenerateContentRequest.system_instruction: only text parts are supported")
    declared = _check_tools(body, errors, vertex)
    if "toolConfig" in body:
        _check_tool_config(body["toolConfig"], declared, errors)
    if "generationConfig" in body:
        _check_generation(body["generationConfig"], errors)
    return errors


# -- answers --------------------------------------------------------------------------------------------


def _words(value: Any) -> int:
    return len(orjson.dumps(value).decode().replace('"', " ").split()) if value is not None else 0


def _last_user(body: dict[str, Any]) -> dict[str, Any]:
    for content in reversed(body.get("contents") or []):
        if content.get("role") == "user":
            return dict(content)
    return {"parts": []}


def _sample(schema: dict[str, Any], text: str) -> Any:
    kind = str(schema.get("type", "STRING")).upper()
    if schema.get("enum"):
        return schema["enum"][0]
    return {"STRING": text, "INTEGER": 1, "NUMBER": 1.5, "BOOLEAN": True, "ARRAY": [], "OBJECT": {}}.get(kind, text)


def _function_call(body: dict[str, Any], text: str) -> dict[str, Any] | None:
    """The call to answer with: tools declared, calling not off, and the user did not just answer a call."""
    if any("functionResponse" in p for p in _last_user(body)["parts"]):
        return None
    declarations = [d for t in body.get("tools") or [] for d in t.get("functionDeclarations") or []]
    calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    if not declarations or calling.get("mode") == "NONE":
        return None
    allowed = calling.get("allowedFunctionNames")
    declaration = next((d for d in declarations if not allowed or d["name"] in allowed), declarations[0])
    parameters = declaration.get("parameters") or {}
    properties = parameters.get("properties") or {}
    args = {name: _sample(properties[name], text) for name in parameters.get("required") or [] if name in properties}
    return {"name": declaration["name"], "args": args}


@dataclass
class _Answer:
    thought: str | None
    text: str | None
    call: dict[str, Any] | None
    finish: str
    usage: dict[str, Any]


def _answer(body: dict[str, Any], state: GeminiUpstream) -> _Answer:
    last = _last_user(body)
    texts = [p["text"] for p in last["parts"] if isinstance(p.get("text"), str)]
    results = [p["functionResponse"].get("response") for p in last["parts"] if "functionResponse" in p]
    said = " ".join(texts) or (orjson.dumps(results[0]).decode() if results else "")
    config = body.get("generationConfig") or {}
    thinking = config.get("thinkingConfig") or {}
    thinks = thinking.get("includeThoughts") and thinking.get("thinkingBudget", -1) != 0
    thought = "Thinking about the request." if thinks else None
    call = _function_call(body, " ".join(texts))
    text = None if call else f"echo: {said}".strip()
    if text is not None and config.get("responseMimeType") == "application/json":  # JSON mode: an object
        schema = config.get("responseSchema") or {}
        properties = schema.get("properties") or {}
        text = orjson.dumps({name: _sample(sub, said) for name, sub in properties.items()}).decode()
    finish = "STOP"
    if text is not None and config.get("maxOutputTokens") and len(text.split()) > config["maxOutputTokens"]:
        text, finish = " ".join(text.split()[: config["maxOutputTokens"]]), "MAX_TOKENS"
    prompt = _words(body.get("contents")) + _words(body.get("systemInstruction"))
    output = _words(call) if call else len((text or "").split())
    thoughts = len(thought.split()) if thought else 0
    usage: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": output,
                             "totalTokenCount": prompt + output + thoughts,
                             "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}  # fmt: skip
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return _Answer(thought, text, call, finish, usage)


def _signature(number: int) -> str:
    return base64.b64encode(f"signature-{number}".encode()).decode()


def _call_part(call: dict[str, Any], state: GeminiUpstream) -> dict[str, Any]:
    function = dict(call)
    if state.call_ids:
        function["id"] = f"fc-{uuid.uuid4().hex[:8]}"
    return {"functionCall": function, "thoughtSignature": _signature(len(state.received))}


def _envelope(received: GeminiReceived, candidate: dict[str, Any], usage: dict[str, Any] | None, ident: str) -> bytes:
    document: dict[str, Any] = {"candidates": [candidate]}
    if usage is not None:
        document["usageMetadata"] = usage
    document["modelVersion"] = received.model
    if received.vertex:
        document["createTime"] = "2026-01-01T00:00:00.000000Z"
    document["responseId"] = ident
    return orjson.dumps(document)


def _whole(received: GeminiReceived, answer: _Answer, state: GeminiUpstream, ident: str) -> bytes:
    parts: list[dict[str, Any]] = []
    if answer.thought:
        parts.append({"text": answer.thought, "thought": True})
    if answer.call:
        parts.append(_call_part(answer.call, state))
    if answer.text is not None:
        parts.append({"text": answer.text})
        if answer.thought:
            parts[-1]["thoughtSignature"] = _signature(len(state.received))
    candidate = {"content": {"parts": parts, "role": "model"}, "finishReason": answer.finish, "index": 0}
    return _envelope(received, candidate, answer.usage, ident)


def _chunks(received: GeminiReceived, answer: _Answer, state: GeminiUpstream, ident: str) -> list[bytes]:
    """Several chunks, as Gemini streams: usage on each (prompt only until the last), finish on the last."""
    pieces: list[list[dict[str, Any]]] = []
    if answer.thought:
        pieces.append([{"text": answer.thought, "thought": True}])
    if answer.call:
        pieces.append([_call_part(answer.call, state)])
    if answer.text is not None:
        words = answer.text.split(" ")
        size = max(state.words_per_chunk, 1)
        for start in range(0, len(words), size):
            piece = " ".join(words[start : start + size])
            pieces.append([{"text": piece if start == 0 else " " + piece}])
        if answer.thought:
            pieces[-1][0]["thoughtSignature"] = _signature(len(state.received))
    running = {"promptTokenCount": answer.usage["promptTokenCount"],
               "totalTokenCount": answer.usage["promptTokenCount"]}  # fmt: skip
    out = []
    for number, parts in enumerate(pieces):
        last = number == len(pieces) - 1
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if last:
            candidate["finishReason"] = answer.finish
        out.append(_envelope(received, candidate, answer.usage if last else running, ident))
    return out


# -- handlers -------------------------------------------------------------------------------------------


async def _generate(request: web.Request) -> web.StreamResponse:
    state = request.app[GEMINI_UPSTREAM]
    vertex = "publishers" in request.match_info
    version = request.match_info["version"]
    model, _, action = request.match_info["call"].partition(":")
    actions = (*_ACTIONS, "predict") if vertex else (*_ACTIONS, "batchEmbedContents")  # Vertex embeds by predict
    if version not in (_VERTEX_VERSIONS if vertex else _GEMINI_VERSIONS) or action not in actions:
        return _error(404, f"The requested URL {request.path} was not found on this server.")
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _error(400, "Invalid JSON payload received. Unexpected token.")
    if _too_deep(body):
        return _error(400, f"Invalid JSON payload received. Message nested deeper than {_MAX_DEPTH} levels.")
    received = GeminiReceived(request.path, dict(request.query), dict(request.headers), body, model, action, vertex)
    state.received.append(received)
    if not received.key:
        return _error(403, "Method doesn't allow unregistered callers (callers without established identity). "
                           "Please use API Key or other form of API consumer identity to call this API.")  # fmt: skip
    if state.tokens is not None and "project" in request.match_info:
        if not state.tokens(received.key):
            return _error(401, "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                               "login cookie or other valid authentication credential.")  # fmt: skip
    elif received.key not in state.keys:
        status = state.invalid_key_status
        return _error(status, "API key not valid. Please pass a valid API key.", "API_KEY_INVALID")
    if state.models is not None and model not in state.models:
        return _error(404, f"models/{model} is not found for API version {version}, or is not supported for "
                           f"{action}. Call ListModels to see the list of available models and their supported "
                           f"methods.")  # fmt: skip
    if action == "countTokens":
        return _count(body, vertex)
    if action == "batchEmbedContents":
        return _batch_embed(body, model, state)
    if action == "predict":
        return _predict(body, model, state)
    errors = validate_generate_content(body, vertex=vertex, signatures=state.require_signatures)
    if errors:
        return _error(400, "\n".join(errors))
    fault = state._fault_for(received.key) or GeminiFault()
    if fault.delay:
        await asyncio.sleep(fault.delay)
    if fault.status is not None:
        payload = fault.body if fault.body is not None else google_error(fault.status, fault.message)
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        return web.Response(status=fault.status, body=data, headers=fault.headers, content_type="application/json")
    answer = _answer(camelized(body), state)
    ident = uuid.uuid4().hex[:22]
    if not received.stream:
        return web.Response(body=_whole(received, answer, state, ident), content_type="application/json")
    chunks = _chunks(received, answer, state, ident)
    if request.query.get("alt") != "sse":  # without alt=sse Google streams one JSON array
        return web.Response(body=b"[" + b",\r\n".join(chunks) + b"]", content_type="application/json")
    return await _stream(request, chunks, fault)


async def _stream(request: web.Request, chunks: list[bytes], fault: GeminiFault) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for count, chunk in enumerate(chunks):
        if fault.drop_after is not None and count >= fault.drop_after:
            assert request.transport is not None
            request.transport.abort()  # a provider that dies mid-stream
            return response
        if fault.error_after is not None and count >= fault.error_after:
            await response.write(b"data: " + orjson.dumps(google_error(500, "An internal error has occurred.")) +
                                 b"\r\n\r\n")  # fmt: skip
            break
        await response.write(b"data: " + chunk + b"\r\n\r\n")
    await response.write_eof()
    return response


def _count(body: dict[str, Any], vertex: bool) -> web.Response:
    """countTokens: Gemini takes ``contents`` or a whole ``generateContentRequest``; Vertex takes the fields."""
    inner = body.get("generateContentRequest")
    if inner is not None:
        if vertex:
            return _error(400, 'Invalid JSON payload received. Unknown name "generateContentRequest": Cannot find '
                               "field.")  # fmt: skip
        if set(body) != {"generateContentRequest"}:
            return _error(400, "contents and generate_content_request are mutually exclusive.")
        body = {k: v for k, v in inner.items() if k != "model"}
    errors = validate_generate_content(body, vertex=vertex)
    if errors:
        return _error(400, "\n".join(errors))
    body = camelized(body)
    tokens = _words(body.get("contents")) + _words(body.get("systemInstruction"))
    return web.json_response({"totalTokens": tokens, "promptTokensDetails": [{"modality": "TEXT",
                                                                               "tokenCount": tokens}]})  # fmt: skip


_EMBED_FIELDS = {"model", "content", "taskType", "title", "outputDimensionality"}
_TASK_TYPES = {"TASK_TYPE_UNSPECIFIED", "RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY",
               "CLASSIFICATION", "CLUSTERING", "QUESTION_ANSWERING", "FACT_VERIFICATION",
               "CODE_RETRIEVAL_QUERY"}  # fmt: skip
MAX_EMBED_BATCH = 100


def _embed_objections(body: Any, model: str) -> list[str]:
    """BatchEmbedContentsRequest as Google documents it: ``requests[]`` of EmbedContentRequest, each naming
    the batch's own model, with text-only content and the optional task type, title and dimensionality."""
    if not isinstance(body, dict) or set(body) != {"requests"}:
        return ['Invalid JSON payload received. The body must be exactly {"requests": [...]}.']
    requests = body["requests"]
    if not isinstance(requests, list) or not requests:
        return ["* BatchEmbedContentsRequest.requests: contents is not specified"]
    if len(requests) > MAX_EMBED_BATCH:
        return [f"* BatchEmbedContentsRequest.requests: at most {MAX_EMBED_BATCH} requests can be in one batch"]
    errors: list[str] = []
    for index, one in enumerate(requests):
        where = f"requests[{index}]"
        if not isinstance(one, dict):
            errors.append(f"{where}: must be an object")
            continue
        unknown = sorted(set(one) - _EMBED_FIELDS)
        if unknown:
            errors.append(
                f"Invalid JSON payload received. Unknown name \"{unknown[0]}\" at '{where}': Cannot find field."
            )
        if one.get("model") != f"models/{model}":
            errors.append(f"* BatchEmbedContentsRequest.{where}.model: the model must be models/{model}, the batch's")
        content = one.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts or not all(
            isinstance(p, dict) and set(p) == {"text"} and isinstance(p["text"], str) and p["text"] for p in parts
        ):  # fmt: skip
            errors.append(f"* BatchEmbedContentsRequest.{where}.content: parts must be non-empty text parts")
        dimensions = one.get("outputDimensionality")
        if dimensions is not None and (
            isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
        ):
            errors.append(f"* BatchEmbedContentsRequest.{where}.output_dimensionality: must be a positive integer")
        if one.get("taskType", "TASK_TYPE_UNSPECIFIED") not in _TASK_TYPES:
            errors.append(f"* BatchEmbedContentsRequest.{where}.task_type: unknown task type")
        if "title" in one and one.get("taskType") != "RETRIEVAL_DOCUMENT":
            errors.append(f"* BatchEmbedContentsRequest.{where}.title: only for task type RETRIEVAL_DOCUMENT")
    return errors


def _batch_embed(body: Any, model: str, state: GeminiUpstream) -> web.Response:
    """One embedding per request, derived from its text; 768 values unless ``outputDimensionality`` says."""
    errors = _embed_objections(body, model)
    if errors:
        return _error(400, "\n".join(errors))
    fault = state._fault_for(state.last.key)
    if fault is not None and fault.status is not None:
        return _error(fault.status, fault.message)
    embeddings = []
    for one in body["requests"]:
        text = " ".join(p["text"] for p in one["content"]["parts"])
        seed = sum(text.encode())
        size = one.get("outputDimensionality") or 768
        embeddings.append({"values": [((seed + i) % 17 - 8) / 8 for i in range(size)]})
    return web.json_response({"embeddings": embeddings})


_PREDICT_INSTANCE = {"content", "task_type", "title"}
_PREDICT_PARAMETERS = {"autoTruncate", "outputDimensionality"}


def _predict_objections(body: Any, model: str) -> list[str]:
    """Vertex's text-embedding ``predict``: ``instances[]`` of ``{content, task_type?, title?}`` and optional
    ``parameters`` (``autoTruncate``, ``outputDimensionality``), as its REST reference documents them."""
    if not isinstance(body, dict) or not set(body) <= {"instances", "parameters"}:
        return ['Invalid JSON payload received. Unknown name: only "instances" and "parameters" are fields.']
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        return ["instances: must be a non-empty list"]
    most = 1 if model.startswith("gemini-embedding") else 250  # gemini-embedding-001 embeds one input per call
    if len(instances) > most:
        return [f"instances: at most {most} instances per request for {model}"]
    errors = []
    for index, one in enumerate(instances):
        if not isinstance(one, dict) or not set(one) <= _PREDICT_INSTANCE or not isinstance(one.get("content"), str):
            errors.append(f"instances[{index}]: must be {{content: string, task_type?, title?}}")
        elif not one["content"]:
            errors.append(f"instances[{index}].content: must not be empty")
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict) or not set(parameters) <= _PREDICT_PARAMETERS:
        errors.append("parameters: only autoTruncate and outputDimensionality are known")
    elif "outputDimensionality" in parameters and (
        isinstance(parameters["outputDimensionality"], bool) or not isinstance(parameters["outputDimensionality"], int)
        or parameters["outputDimensionality"] < 1
    ):  # fmt: skip
        errors.append("parameters.outputDimensionality: must be a positive integer")
    return errors


def _predict(body: Any, model: str, state: GeminiUpstream) -> web.Response:
    """One prediction per instance, with its embedding and its token count (words, as everywhere here)."""
    errors = _predict_objections(body, model)
    if errors:
        return _error(400, "\n".join(errors))
    size = body.get("parameters", {}).get("outputDimensionality") or 768
    predictions = []
    for one in body["instances"]:
        seed = sum(one["content"].encode())
        values = [((seed + i) % 17 - 8) / 8 for i in range(size)]
        statistics = {"truncated": False, "token_count": len(one["content"].split())}
        predictions.append({"embeddings": {"values": values, "statistics": statistics}})
    return web.json_response({"predictions": predictions, "metadata": {"billableCharacterCount": 0}})


def create_gemini_app(state: GeminiUpstream) -> web.Application:
    """Gemini's paths (``/v1beta/models/{model}:action``) and Vertex express mode's (``/v1/publishers/google/...``)."""
    app = web.Application()
    app[GEMINI_UPSTREAM] = state
    app.router.add_post("/{version}/models/{call}", _generate)
    app.router.add_post("/{version}/{publishers:publishers}/google/models/{call}", _generate)
    project = "/{version}/projects/{project}/locations/{location}/{publishers:publishers}/google/models/{call}"
    app.router.add_post(project, _generate)  # Vertex's project endpoints, authorised by an access token
    return app


async def start_gemini(aiohttp_server: Callable[..., Awaitable[TestServer]],
                       **options: Any) -> tuple[GeminiUpstream, str]:  # fmt: skip
    """Serve a fake Gemini on loopback: its state and its base URL (no trailing slash, no version)."""
    state = GeminiUpstream(**options)
    server = await aiohttp_server(create_gemini_app(state))
    return state, str(server.make_url("")).rstrip("/")
