"""Google's Gemini API ``generateContent`` (and Vertex AI's, in API-key express mode) as a canonical codec.

Choices worth knowing:

- Gemini answers a function call by NAME. A ``ToolResult`` without ``name`` takes the name of the ``ToolCall`` with
  its id earlier in the conversation. Ids are not sent upstream: the Gemini API has answered ``Unknown name "id"``
  for ``functionCall.id``/``functionResponse.id`` in requests, and pairs calls with responses by name and order.
  Ids are kept where Gemini issues or accepts them (responses to Gemini clients, a Gemini client's own history).
- Thought signatures: a signature Gemini issued is tagged ``gemini:`` inside the canonical model, so that only those
  go back to Gemini (another vendor's signature would be rejected as corrupt) and another vendor's codec can tell
  them apart. A signature on a text or functionCall part (where Gemini puts them) becomes a ``Thinking`` with empty
  text just before that part, and is re-attached to the next part on the way back. Thinking from history is dropped
  unless it carries a Gemini signature. A model turn whose function calls carry no signature (history from another
  model, or from a client that dropped them) gets Google's documented ``skip_thought_signature_validator`` on its
  first call, without which Gemini 3 answers 400.
- Usage: ``output`` counts candidates plus thoughts and ``reasoning`` the thoughts, as OpenAI counts reasoning inside
  completion tokens; ``input`` is the prompt (cached tokens included, as in OpenAI's ``prompt_tokens``).
- Tool schemas are cut down to the OpenAPI 3.0 subset Gemini's ``Schema`` accepts (see ``_schema``).
"""

from __future__ import annotations

import copy
import mimetypes
import re
import uuid
from collections.abc import Callable
from typing import Any, Self
from urllib.parse import urlsplit

import orjson

from . import fields
from .canonical import (
    BLANK_LINE,
    THINKING_LEVELS,
    Event,
    Finish,
    FinishReason,
    Image,
    JsonOutput,
    Message,
    MessageStart,
    Part,
    Reasoning,
    Request,
    Response,
    StreamEnd,
    StreamError,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    ToolResult,
    TranslationError,
    Usage,
)
from .codec import Codec, CodecBase
from .embeddings import EmbeddingsWire, GeminiEmbeddings, VertexEmbeddings
from .vertex_claude import VertexClaudeCodec

#: Prefix on canonical signatures that Gemini issued (see the module docstring).
SIGNATURE_PREFIX = "gemini:"
#: Google's documented signature for function calls the model did not sign (foreign or stripped history).
SKIP_SIGNATURE = "skip_thought_signature_validator"
#: The highest thinking budget a Gemini model accepts (2.5 Pro); larger budgets and levels are capped to it.
MAX_THINKING_BUDGET = 32768

_FILTERED = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
             "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "MODEL_ARMOR")  # fmt: skip
_FINISH_IN: dict[str, FinishReason] = {"STOP": "stop", "MAX_TOKENS": "length"}
_FINISH_IN.update(dict.fromkeys(_FILTERED, "content_filter"))
_FINISH_OUT = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "content_filter": "SAFETY"}
_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ABORTED",
    413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
    503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}  # fmt: skip
_MODES_OUT = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_MODES_IN: dict[str, ToolChoice] = {"AUTO": "auto", "VALIDATED": "auto", "NONE": "none", "ANY": "required"}
_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")
_MAX_STOP_SEQUENCES = 5

# -- helpers shared by both directions ------------------------------------------------------------------


def _get(obj: dict[str, Any], name: str) -> Any:
    """A field by its JSON name, or by its proto name: Google's parsers accept both spellings."""
    value = obj.get(name)
    if value is None:
        value = obj.get(re.sub(r"([A-Z])", r"_\1", name).lower())
    return value


def _tag(signature: Any) -> str | None:
    return f"{SIGNATURE_PREFIX}{signature}" if isinstance(signature, str) and signature else None


def _untag(signature: str | None) -> str | None:
    """The raw Gemini signature, or None for a missing or foreign one."""
    if signature is None or not signature.startswith(SIGNATURE_PREFIX):
        return None
    return signature[len(SIGNATURE_PREFIX) :] or None


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    fallback = "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"
    error: dict[str, Any] = {"code": status, "message": message, "status": _STATUS.get(status, fallback)}
    if code:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": code,
                             "domain": "cliproxy"}]  # fmt: skip
    return {"error": error}


def _args(arguments: str, where: str) -> dict[str, Any]:
    """Gemini takes arguments as an object, not as JSON text."""
    if not arguments.strip():
        return {}
    try:
        args = orjson.loads(arguments)
    except orjson.JSONDecodeError as exc:
        raise TranslationError(f"{where}.arguments: not valid JSON ({exc})") from None
    if not isinstance(args, dict):
        raise TranslationError(f"{where}.arguments: must be a JSON object")
    return fields.bounded(args, f"{where}.arguments")


def _model_parts(parts: list[Part], where: str, *, ids: bool, unsigned_thoughts: bool) -> list[dict[str, Any]]:
    """A model turn's parts; signature-only ``Thinking`` is attached to the part that follows it.

    ``ids`` keeps functionCall ids (for Gemini clients, not upstream); ``unsigned_thoughts`` keeps thought text that
    no Gemini signature vouches for (shown to clients, useless to Gemini as input).
    """
    out: list[dict[str, Any]] = []
    pending: str | None = None
    for index, part in enumerate(parts):
        encoded: dict[str, Any]
        if isinstance(part, Thinking):
            signature = _untag(part.signature)
            if not part.text or (signature is None and not unsigned_thoughts):
                pending = signature or pending
                continue
            encoded = {"text": part.text, "thought": True}
            if signature is not None:
                encoded["thoughtSignature"] = signature
                out.append(encoded)
                continue
        elif isinstance(part, Text):
            if not part.text:
                continue
            encoded = {"text": part.text}
        elif isinstance(part, ToolCall):
            call: dict[str, Any] = {"name": part.name, "args": _args(part.arguments, f"{where}.parts[{index}]")}
            if ids and part.id:
                call["id"] = part.id
            encoded = {"functionCall": call}
        else:
            raise TranslationError(f"{where}.parts[{index}]: {type(part).__name__} cannot appear in a model turn")
        if pending is not None:
            encoded["thoughtSignature"], pending = pending, None
        out.append(encoded)
    if pending is not None:  # where Gemini itself sends a trailing signature: an empty text part
        out.append({"text": "", "thoughtSignature": pending})
    return out


# -- request encoding (canonical -> Gemini) -------------------------------------------------------------


def _media(image: Image, where: str) -> dict[str, Any]:
    if image.data is not None:
        return {"inlineData": {"mimeType": image.media_type, "data": image.data}}
    url = image.url or ""
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        return {"inlineData": {"mimeType": head[5:].split(";")[0] or image.media_type, "data": data}}
    scheme = urlsplit(url).scheme
    if scheme not in ("https", "gs"):
        raise TranslationError(f"{where}: Gemini fetches images only from https:// or gs:// URLs")
    media_type = image.media_type if "*" not in image.media_type else mimetypes.guess_type(urlsplit(url).path)[0]
    if not media_type:
        raise TranslationError(f"{where}: the image URL does not tell its media type, which Gemini requires")
    return {"fileData": {"mimeType": media_type, "fileUri": url}}


def _tool_result(result: ToolResult, where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    """A functionResponse, then the result's images as parts of the same turn (a response holds JSON only)."""
    name = result.name or names.get(result.call_id)
    if not name:
        raise TranslationError(f"{where}: no earlier tool call has id {result.call_id!r}, and Gemini needs its name")
    text = "\n".join(p.text for p in result.content if isinstance(p, Text))
    response = {"error" if result.is_error else "result": text}
    parts: list[dict[str, Any]] = [{"functionResponse": {"name": name, "response": response}}]
    parts.extend(_media(p, f"{where}.content") for p in result.content if isinstance(p, Image))
    return parts


def _user_parts(message: Message, where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for index, part in enumerate(message.parts):
        here = f"{where}.parts[{index}]"
        if isinstance(part, Text):
            if part.text:
                out.append({"text": part.text})
        elif isinstance(part, Image):
            out.append(_media(part, here))
        elif isinstance(part, ToolResult):
            out.extend(_tool_result(part, here, names))
        elif isinstance(part, ToolCall):
            raise TranslationError(f"{here}: a tool call cannot appear in a user turn")
        # Thinking in a user turn means nothing to Gemini
    return out


def _sign_calls(content: dict[str, Any]) -> None:
    """Gemini 3 rejects a model turn whose first function call is unsigned; say it came from elsewhere."""
    calls = [p for p in content["parts"] if "functionCall" in p]
    if calls and not any("thoughtSignature" in p for p in calls):
        calls[0]["thoughtSignature"] = SKIP_SIGNATURE


def _encode_contents(messages: list[Message]) -> list[dict[str, Any]]:
    names = {p.id: p.name for m in messages for p in m.parts if isinstance(p, ToolCall)}
    contents: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if message.role == "assistant":
            role, parts = "model", _model_parts(message.parts, where, ids=False, unsigned_thoughts=False)
        else:
            role, parts = "user", _user_parts(message, where, names)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)  # Gemini wants turns to alternate
        else:
            contents.append({"role": role, "parts": parts})
    for content in contents:
        if content["role"] == "model":
            _sign_calls(content)
    if not contents:
        raise TranslationError("messages: Gemini needs at least one turn with content")
    return contents


# Gemini's Schema: a subset of OpenAPI 3.0. Anything else is answered with 400 "Unknown name".
_SCHEMA_SCALARS = ("title", "description", "nullable", "default", "example", "pattern", "minimum", "maximum",
                   "minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")  # fmt: skip
_FORMATS = {"string": ("enum", "date-time"), "number": ("float", "double"), "integer": ("int32", "int64")}
_TYPES = ("string", "number", "integer", "boolean", "array", "object")


_SCHEMA_NODES = 10_000  # far more than any real tool schema has, even inlined


class _Defs(dict[str, Any]):
    """A tool schema's definitions, and how many more schema nodes its conversion may produce.

    Inlining ``$ref``s (and re-merging ``allOf``) can multiply: twenty definitions that each refer to the next
    twice would expand to a million nodes from a 2 KB request. A budget stops that with a 400.
    """

    def __init__(self, definitions: dict[str, Any]) -> None:
        super().__init__(definitions)
        self.budget = _SCHEMA_NODES

    def spend(self, where: str) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise TranslationError(f"{where}: the schema grows past {_SCHEMA_NODES} nodes once its $refs are inlined")


def _resolve(ref: Any, defs: _Defs, seen: tuple[str, ...], where: str) -> tuple[dict[str, Any], str]:
    if not isinstance(ref, str) or not ref.startswith(("#/$defs/", "#/definitions/")):
        raise TranslationError(f"{where}.$ref: only local #/$defs references can be inlined for Gemini")
    name = ref.rsplit("/", 1)[1]
    if name in seen:
        raise TranslationError(f"{where}.$ref: {ref} is recursive, which Gemini's schemas cannot express")
    if not isinstance(defs.get(name), dict):
        raise TranslationError(f"{where}.$ref: {ref} is not defined")
    return defs[name], name


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    """``allOf`` as Gemini can take it: one schema with the members' properties and requirements together."""
    for key, value in other.items():
        if key == "properties" and isinstance(into.get(key), dict) and isinstance(value, dict):
            into[key] = {**into[key], **value}
        elif key == "required" and isinstance(into.get(key), list) and isinstance(value, list):
            into[key] = into[key] + [name for name in value if name not in into[key]]
        else:
            into.setdefault(key, value)


def _variants(schema: dict[str, Any], where: str, defs: _Defs, seen: tuple[str, ...]) -> dict[str, Any]:
    """``anyOf``/``oneOf`` and type lists, with ``null`` taken out as ``nullable``."""
    members = schema.get("anyOf") or schema.get("oneOf")
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf", "type")}
    if members is None and isinstance(schema.get("type"), list):  # each type with the keywords that go with it
        members = [{**rest, "type": kind} for kind in schema["type"]]
        rest = {k: v for k, v in rest.items() if k in ("title", "description", "default")}
    if not isinstance(members, list):
        raise TranslationError(f"{where}.anyOf: must be a list")
    options = [_schema(m, f"{where}.anyOf[{i}]", defs, seen) for i, m in enumerate(members)]
    nullable = any(o.get("nullable") and "type" not in o for o in options)
    options = [o for o in options if "type" in o or "anyOf" in o]
    merged = _schema(rest, where, defs, seen)
    if len(options) == 1:
        _merge(merged, options[0])
    elif options:
        merged["anyOf"] = options
    if nullable:
        merged["nullable"] = True
    return merged


def _schema(schema: Any, where: str, defs: _Defs, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON Schema cut down to what Gemini's Schema accepts, recursively.

    Local ``$ref``s are inlined, ``allOf`` merged, ``null`` types become ``nullable``, ``const`` a one-value enum;
    what Gemini rejects is dropped: ``$schema``, ``additionalProperties``, ``$defs``, ``exclusiveMinimum``, string
    formats other than ``enum``/``date-time``, and ``enum`` on non-string types (its values move to the description).
    """
    defs.spend(where)
    if schema is True or schema == {}:
        return {}
    if not isinstance(schema, dict):
        raise TranslationError(f"{where}: a schema must be an object")
    if "$ref" in schema:
        target, name = _resolve(schema["$ref"], defs, seen, where)
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return _schema({**target, **rest}, where, defs, (*seen, name))
    if "allOf" in schema:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for index, member in enumerate(fields.array(schema["allOf"], f"{where}.allOf")):
            _merge(merged, _schema(member, f"{where}.allOf[{index}]", defs, seen))
        return _schema(merged, where, defs, seen)
    if "anyOf" in schema or "oneOf" in schema or isinstance(schema.get("type"), list):
        return _variants(schema, where, defs, seen)
    out: dict[str, Any] = {key: schema[key] for key in _SCHEMA_SCALARS if schema.get(key) is not None}
    kind = schema.get("type")
    if kind is not None:
        kind = str(kind).lower()
        if kind == "null":
            return {**out, "nullable": True}
        if kind not in _TYPES:
            raise TranslationError(f"{where}.type: {kind!r} is not a type Gemini knows")
    values = [schema["const"]] if "const" in schema else schema.get("enum")
    if isinstance(values, list):
        kind = _enum(out, kind, values)
    if kind is not None:
        out["type"] = kind
    if schema.get("format") in _FORMATS.get(kind or "", ()):
        out["format"] = schema["format"]
    if kind == "object" or isinstance(schema.get("properties"), dict):
        _object(out, schema, where, defs, seen)
    if kind == "array":
        items = schema.get("items")
        if isinstance(items, list):  # tuple validation: Gemini has one item schema
            items = items[0] if items else None
        item_schema = _schema(items, f"{where}.items", defs, seen) if items is not None else {}
        out["items"] = item_schema if "type" in item_schema or "anyOf" in item_schema else {"type": "string"}
    return out


def _whole_schema(schema: dict[str, Any], where: str) -> dict[str, Any]:
    """A JSON Schema with its own definitions, as Gemini's Schema."""
    defs = _Defs({**fields.mapping(schema.get("definitions"), f"{where}.definitions"),
                  **fields.mapping(schema.get("$defs"), f"{where}.$defs")})  # fmt: skip
    return _schema(schema, where, defs)


def _enum(out: dict[str, Any], kind: str | None, values: list[Any]) -> str | None:
    """Gemini takes enums of strings only; other enums become a hint in the description."""
    if None in values:
        out["nullable"] = True
    values = [v for v in values if v is not None]
    if kind in (None, "string") and all(isinstance(v, str) for v in values):
        out["enum"] = values
        return "string"
    hint = "one of: " + ", ".join(orjson.dumps(v).decode() for v in values)
    out["description"] = f"{out['description']} ({hint})" if out.get("description") else hint.capitalize()
    return kind


def _object(out: dict[str, Any], schema: dict[str, Any], where: str, defs: _Defs, seen: tuple[str, ...]) -> None:
    out["type"] = "object"
    properties = fields.mapping(schema.get("properties"), f"{where}.properties")
    if properties:
        out["properties"] = {
            name: _schema(value, f"{where}.properties.{name}", defs, seen) for name, value in properties.items()
        }
    required = [name for name in fields.texts(schema.get("required"), f"{where}.required") if name in properties]
    if required:
        out["required"] = required
    ordering = schema.get("propertyOrdering")
    if isinstance(ordering, list) and all(isinstance(n, str) for n in ordering) and set(ordering) <= set(properties):
        out["propertyOrdering"] = ordering


def _encode_tools(tools: list[Tool]) -> list[dict[str, Any]]:
    declarations = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not _FUNCTION_NAME.fullmatch(tool.name):
            raise TranslationError(f"{where}.name: Gemini function names start with a letter or _, then up to 63 of "
                                   f"letters, digits, _ . : -; got {tool.name!r}")  # fmt: skip
        declaration: dict[str, Any] = {"name": tool.name}
        if tool.description:
            declaration["description"] = tool.description
        parameters = _whole_schema(tool.parameters or {}, f"{where}.parameters")
        if parameters.get("properties"):  # Gemini rejects an OBJECT without properties: no parameters at all
            declaration["parameters"] = parameters
        declarations.append(declaration)
    return [{"functionDeclarations": declarations}]


def _tool_config(choice: ToolChoice) -> dict[str, Any]:
    if choice in _MODES_OUT:
        return {"functionCallingConfig": {"mode": _MODES_OUT[choice]}}
    return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice]}}


def _thinking(reasoning: Reasoning) -> dict[str, Any]:
    budget = reasoning.budget
    if budget is None and reasoning.effort is not None:
        if reasoning.effort not in THINKING_LEVELS:
            raise TranslationError(f"reasoning.effort: {reasoning.effort!r} is not one of {', '.join(THINKING_LEVELS)}")
        budget = THINKING_LEVELS[reasoning.effort]
    if budget is None:
        return {"thinkingBudget": -1, "includeThoughts": True}  # dynamic: the model decides
    if budget <= 0:
        return {"thinkingBudget": 0}
    return {"thinkingBudget": min(budget, MAX_THINKING_BUDGET), "includeThoughts": True}


def _generation_config(request: Request) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key, value in (("maxOutputTokens", request.max_tokens), ("temperature", request.temperature),
                       ("topP", request.top_p)):  # fmt: skip
        if value is not None:
            config[key] = value
    if request.stop:
        if len(request.stop) > _MAX_STOP_SEQUENCES:
            raise TranslationError(f"stop: Gemini takes at most {_MAX_STOP_SEQUENCES} stop sequences")
        config["stopSequences"] = request.stop
    if request.reasoning is not None:
        config["thinkingConfig"] = _thinking(request.reasoning)
    if request.output is not None:
        config["responseMimeType"] = "application/json"
        schema = request.output.schema
        if schema is not None:
            config["responseSchema"] = _whole_schema(schema, "response_format.schema")
    return config


# -- response decoding (Gemini -> canonical) ------------------------------------------------------------


def _decode_part(part: dict[str, Any], where: str, new_id: Callable[[], str], strict: bool = True) -> list[Part]:
    """One Gemini part as canonical parts: a signature rides ahead of its part as signature-only Thinking.

    Not ``strict`` (an upstream's answer), parts of kinds never asked for are skipped rather than failing the answer.
    """
    signature = _tag(_get(part, "thoughtSignature"))
    text = part.get("text")
    if isinstance(text, str) and part.get("thought") is True:
        return [Thinking(text, signature)]
    out: list[Part] = [Thinking("", signature)] if signature else []
    call = _get(part, "functionCall")
    if isinstance(text, str):
        if text:
            out.append(Text(text))
    elif isinstance(call, dict):
        call_id = fields.optional_text(call.get("id"), f"{where}.functionCall.id")
        arguments = fields.json_object(call.get("args") or {}, f"{where}.functionCall.args")
        out.append(ToolCall(call_id or new_id(), fields.text(call.get("name"), f"{where}.functionCall.name"),
                            orjson.dumps(arguments).decode()))  # fmt: skip
    elif _get(part, "inlineData") is not None or _get(part, "fileData") is not None:
        try:
            out.append(_decode_media(part, where))
        except TranslationError:
            if strict:
                raise
    elif strict and set(part) - {"thoughtSignature", "thought_signature", "thought"}:
        raise TranslationError(f"{where}: a part with {', '.join(part)} cannot be translated")
    return out


def _decode_media(part: dict[str, Any], where: str) -> Image:
    inline = _get(part, "inlineData")
    blob = inline if isinstance(inline, dict) else fields.mapping(_get(part, "fileData"), f"{where}.fileData")
    media_type = fields.text(_get(blob, "mimeType"), f"{where}.mimeType")
    if not media_type.startswith("image/"):
        raise TranslationError(f"{where}: only images can be translated, not {media_type or 'untyped data'}")
    if isinstance(inline, dict):
        return Image(media_type, data=fields.text(inline.get("data"), f"{where}.inlineData.data"))
    return Image(media_type, url=fields.text(_get(blob, "fileUri"), f"{where}.fileData.fileUri"))


def _decode_usage(meta: Any) -> Usage:
    if not isinstance(meta, dict):
        return Usage()
    thoughts = int(_get(meta, "thoughtsTokenCount") or 0)
    return Usage(
        input=int(_get(meta, "promptTokenCount") or 0) + int(_get(meta, "toolUsePromptTokenCount") or 0),
        output=int(_get(meta, "candidatesTokenCount") or 0) + thoughts,
        cached=int(_get(meta, "cachedContentTokenCount") or 0),
        reasoning=thoughts,
    )


def _finish(reason: Any, calls: bool) -> FinishReason:
    finish = _FINISH_IN.get(str(reason), "stop")
    return "tool_calls" if calls and finish == "stop" else finish


def _blocked(body: dict[str, Any]) -> bool:
    feedback = _get(body, "promptFeedback")
    return isinstance(feedback, dict) and bool(_get(feedback, "blockReason"))


def _candidate(body: dict[str, Any]) -> dict[str, Any]:
    candidates = body.get("candidates")
    return candidates[0] if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict) else {}


def _candidate_parts(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


# -- request decoding (Gemini client -> canonical) ------------------------------------------------------


def _texts(content: Any, where: str) -> list[Text]:
    if content is None:
        return []
    if isinstance(content, str):
        return [Text(content)] if content else []
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        raise TranslationError(f"{where}: must be a Content with parts")
    texts = []
    for index, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            raise TranslationError(f"{where}.parts[{index}]: only text can be translated here")
        texts.append(Text(part["text"]))
    return texts


def _response_content(response: dict[str, Any], where: str) -> tuple[list[Text | Image], bool]:
    """A functionResponse's payload as text: ``{"result": text}`` and ``{"error": text}`` unwrap, the rest is JSON."""
    payload = fields.bounded(response.get("response"), f"{where}.response")
    content: list[Text | Image] = []
    is_error = False
    if isinstance(payload, dict) and len(payload) == 1 and isinstance(next(iter(payload.values())), str):
        key, text = next(iter(payload.items()))
        is_error = key == "error"
        content.append(Text(text) if key in ("result", "output", "error") else Text(orjson.dumps(payload).decode()))
    elif payload is not None:
        content.append(Text(orjson.dumps(payload).decode()))
    for index, part in enumerate(fields.array(response.get("parts"), f"{where}.parts")):  # Gemini 3's multimodal
        if isinstance(part, dict):
            content.append(_decode_media(part, f"{where}.parts[{index}]"))
    return content, is_error


class _History:
    """Decodes a Gemini client's contents, pairing each functionResponse with the call it answers."""

    def __init__(self) -> None:
        self.count = 0
        self.open_calls: list[ToolCall] = []

    def new_id(self) -> str:
        self.count += 1
        return f"call_{self.count - 1}"

    def model(self, parts: list[dict[str, Any]], where: str) -> list[Part]:
        out: list[Part] = []
        for index, part in enumerate(parts):
            out.extend(_decode_part(part, f"{where}.parts[{index}]", self.new_id))
        self.open_calls = [p for p in out if isinstance(p, ToolCall)]
        return out

    def user(self, parts: list[dict[str, Any]], where: str) -> list[Part]:
        out: list[Part] = []
        for index, part in enumerate(parts):
            here = f"{where}.parts[{index}]"
            response = _get(part, "functionResponse")
            if isinstance(response, dict):
                out.append(self._result(response, here))
            elif part.get("thought") is True:
                continue
            else:
                decoded = [p for p in _decode_part(part, here, self.new_id) if not isinstance(p, Thinking)]
                if any(isinstance(p, ToolCall) for p in decoded):
                    raise TranslationError(f"{here}: a functionCall belongs in a model turn")
                last = out[-1] if out else None
                for item in decoded:
                    if isinstance(item, Image) and isinstance(last, ToolResult):
                        last.content.append(item)  # images right after a functionResponse are its output
                    else:
                        out.append(item)
                        last = item
        return out

    def _result(self, response: dict[str, Any], where: str) -> ToolResult:
        name = fields.text(response.get("name"), f"{where}.functionResponse.name")
        call_id = fields.optional_text(response.get("id"), f"{where}.functionResponse.id")
        match = next((c for c in self.open_calls if c.id == call_id), None) if call_id else None
        if match is None and not call_id:
            match = next((c for c in self.open_calls if c.name == name), None)
            if match is None:
                raise TranslationError(f"{where}.functionResponse: no earlier functionCall named {name!r} to answer")
        if match is not None:
            self.open_calls.remove(match)
        content, is_error = _response_content(response, f"{where}.functionResponse")
        return ToolResult(match.id if match else call_id or "", content, is_error, name or None)


def _decode_contents(contents: Any) -> list[Message]:
    if not isinstance(contents, list) or not contents:
        raise TranslationError("contents: a non-empty list is required")
    history = _History()
    messages: list[Message] = []
    for index, content in enumerate(contents):
        where = f"contents[{index}]"
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
            raise TranslationError(f"{where}.parts: must be a list of parts")
        role = content.get("role") or "user"
        if role == "model":
            message = Message("assistant", history.model(parts, where))
        elif role in ("user", "function"):
            message = Message("user", history.user(parts, where))
        else:
            raise TranslationError(f"{where}.role: {role!r} is not user or model")
        if messages and messages[-1].role == message.role:
            messages[-1].parts.extend(message.parts)
        else:
            messages.append(message)
    return messages


def _json_schema(schema: Any, where: str) -> Any:
    """Gemini's Schema back to JSON Schema: lower-case types, ``nullable`` as a null type, no Gemini-only keys."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        key = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)
        if key in ("nullable", "propertyOrdering"):
            continue
        if key == "type":
            out["type"] = str(value).lower()
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {name: _json_schema(sub, f"{where}.properties.{name}") for name, sub in value.items()}
        elif key == "items":
            out["items"] = _json_schema(value, f"{where}.items")
        elif key == "anyOf" and isinstance(value, list):
            out["anyOf"] = [_json_schema(sub, f"{where}.anyOf[{i}]") for i, sub in enumerate(value)]
        elif key in ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties"):
            out[key] = _int64(value, f"{where}.{key}")
        elif key == "example":
            out["examples"] = [value]
        else:
            out[key] = value
    if schema.get("nullable") is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        elif "anyOf" in out:
            out["anyOf"].append({"type": "null"})
    return out


def _int64(value: Any, where: str) -> int:
    """Google's int64 fields, which may arrive as JSON strings."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    number = fields.integer(value, where)
    if number is None:
        raise TranslationError(f"{where}: must be an integer")
    return number


def _decode_tools(tools: Any) -> list[Tool]:
    decoded = []
    for index, tool in enumerate(fields.array(tools, "tools")):
        declarations = _get(tool, "functionDeclarations") if isinstance(tool, dict) else None
        if not isinstance(declarations, list) or any(k not in ("functionDeclarations", "function_declarations")
                                                     for k in tool):  # fmt: skip
            raise TranslationError(f"tools[{index}]: only functionDeclarations can be translated")
        for number, declaration in enumerate(declarations):
            where = f"tools[{index}].functionDeclarations[{number}]"
            declaration = fields.mapping(declaration, where)
            schema = _get(declaration, "parametersJsonSchema")
            if schema is None:
                parameters = fields.bounded(declaration.get("parameters"), f"{where}.parameters")
                schema = _json_schema(parameters, f"{where}.parameters") or {"type": "object", "properties": {}}
            decoded.append(Tool(fields.text(declaration.get("name"), f"{where}.name"),
                                fields.optional_text(declaration.get("description"), f"{where}.description"),
                                fields.json_object(schema, f"{where}.parametersJsonSchema")))  # fmt: skip
    return decoded


def _decode_tool_choice(config: Any) -> ToolChoice | None:
    calling = _get(config, "functionCallingConfig") if isinstance(config, dict) else None
    if not isinstance(calling, dict) or _get(calling, "mode") in (None, "MODE_UNSPECIFIED"):
        return None
    mode = _get(calling, "mode")
    if not isinstance(mode, str) or mode not in _MODES_IN:
        raise TranslationError(f"toolConfig.functionCallingConfig.mode: {mode!r} cannot be translated")
    allowed = fields.texts(
        _get(calling, "allowedFunctionNames"), "toolConfig.functionCallingConfig.allowedFunctionNames"
    )
    if mode == "ANY" and len(allowed) == 1:
        return allowed[0]
    return _MODES_IN[mode]


def _decode_reasoning(thinking: Any) -> Reasoning | None:
    if not isinstance(thinking, dict):
        return None
    budget = fields.integer(_get(thinking, "thinkingBudget"), "generationConfig.thinkingConfig.thinkingBudget")
    level = _get(thinking, "thinkingLevel")
    if isinstance(level, str) and level.lower() in THINKING_LEVELS:
        return Reasoning(effort=level.lower())
    if budget is not None and budget >= 0:
        return Reasoning(budget=budget)
    if budget == -1:
        return Reasoning(effort="medium")  # dynamic thinking: the canonical model has no "let it decide"
    return None


def _check_generation(config: dict[str, Any]) -> None:
    if _get(config, "candidateCount") not in (None, 1):
        raise TranslationError("generationConfig.candidateCount: only one candidate can be translated")
    mime = _get(config, "responseMimeType")
    if mime not in (None, "text/plain", "application/json"):
        raise TranslationError("generationConfig.responseMimeType: only text/plain or application/json translate")


def _decode_output(config: dict[str, Any]) -> JsonOutput | None:
    if _get(config, "responseMimeType") != "application/json":
        return None
    schema = _get(config, "responseJsonSchema")
    if schema is None and _get(config, "responseSchema") is not None:
        where = "generationConfig.responseSchema"
        schema = _json_schema(fields.bounded(_get(config, "responseSchema"), where), where)
    return JsonOutput(None if schema is None else fields.json_object(schema, "generationConfig.responseSchema"))


# -- response encoding (canonical -> Gemini client) -----------------------------------------------------


def _encode_usage(usage: Usage) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "promptTokenCount": usage.input, "candidatesTokenCount": max(usage.output - usage.reasoning, 0),
        "totalTokenCount": usage.total,
    }  # fmt: skip
    if usage.reasoning:
        meta["thoughtsTokenCount"] = usage.reasoning
    if usage.cached:
        meta["cachedContentTokenCount"] = usage.cached
    return meta


# -- the codecs -----------------------------------------------------------------------------------------


class GeminiCodec(CodecBase):
    """The Gemini API (``generativelanguage.googleapis.com``); auth is the caller's ``x-goog-api-key`` header."""

    name = "gemini"
    stream_end = StreamEnd(rb'"(?:finishReason"\s*:\s*"|error"\s*:\s*\{)')  # Gemini has no closing event
    keepalive = BLANK_LINE
    vendor_headers: tuple[str, ...] = ("x-goog-",)
    usage_markers: tuple[bytes, ...] = (b'"usageMetadata":{', b'"usageMetadata": {')

    def usage_of(self, document: Any) -> Usage | None:
        meta = _get(document, "usageMetadata") if isinstance(document, dict) else None
        return _decode_usage(meta) if isinstance(meta, dict) else None

    default_base_url = "https://generativelanguage.googleapis.com"
    _path_prefix = "/v1beta/models"
    model_key = "modelVersion"
    embeddings: EmbeddingsWire | None = GeminiEmbeddings()
    counts_tokens = True
    auth_markers = (b"API_KEY_INVALID",)  # Google answers a wrong key with 400: it is the key, not the request
    context_window_markers = (b"exceeds the maximum number of tokens",)

    # -- inbound ------------------------------------------------------------------------------------------

    def decode_request(self, body: dict[str, Any]) -> Request:
        config = fields.mapping(_get(body, "generationConfig"), "generationConfig")
        _check_generation(config)
        return Request(
            model=str(body.get("model", "")),  # the model is in the URL: the caller sets it
            messages=_decode_contents(body.get("contents")),
            system=_texts(_get(body, "systemInstruction"), "systemInstruction"),
            tools=_decode_tools(body.get("tools")),
            tool_choice=_decode_tool_choice(_get(body, "toolConfig")),
            max_tokens=fields.integer(_get(config, "maxOutputTokens"), "generationConfig.maxOutputTokens"),
            temperature=fields.number(config.get("temperature"), "generationConfig.temperature"),
            top_p=fields.number(_get(config, "topP"), "generationConfig.topP"),
            stop=fields.texts(_get(config, "stopSequences"), "generationConfig.stopSequences"),
            reasoning=_decode_reasoning(_get(config, "thinkingConfig")),
            stream_usage=True,  # Gemini streams always carry usageMetadata
            output=_decode_output(config),
        )

    def encode_response(self, response: Response) -> bytes:
        parts = _model_parts(response.parts, "response", ids=True, unsigned_thoughts=True)
        candidate = {"content": {"role": "model", "parts": parts}, "finishReason": _FINISH_OUT[response.finish],
                     "index": 0}  # fmt: skip
        return orjson.dumps({"candidates": [candidate], "usageMetadata": _encode_usage(response.usage),
                             "modelVersion": response.model, "responseId": response.id})  # fmt: skip

    def stream_encoder(self, request: Request) -> _StreamEncoder:
        return _StreamEncoder(request.model)

    def encode_error(self, status: int, message: str, code: str | None) -> bytes:
        return orjson.dumps(_error_body(status, message, code))

    # -- upstream -----------------------------------------------------------------------------------------

    def upstream_path(self, model: str, stream: bool) -> str:
        action = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"{self._path_prefix}/{model.removeprefix('models/')}:{action}"

    def encode_request(self, request: Request) -> bytes:
        body: dict[str, Any] = {"contents": _encode_contents(request.messages)}
        system = [{"text": t.text} for t in request.system if t.text]
        if system:
            body["systemInstruction"] = {"parts": system}
        if request.tools:
            body["tools"] = _encode_tools(request.tools)
            if request.tool_choice is not None:
                body["toolConfig"] = _tool_config(request.tool_choice)
        config = _generation_config(request)
        if config:
            body["generationConfig"] = config
        return orjson.dumps(body)

    def decode_response(self, body: dict[str, Any]) -> Response:
        candidate = _candidate(body)
        parts: list[Part] = []
        for index, part in enumerate(_candidate_parts(candidate)):
            parts.extend(_decode_part(part, f"candidates[0].content.parts[{index}]", _new_call_id, strict=False))
        calls = any(isinstance(p, ToolCall) for p in parts)
        finish = "content_filter" if _blocked(body) else _finish(candidate.get("finishReason"), calls)
        return Response(str(_get(body, "responseId") or ""), str(_get(body, "modelVersion") or ""), parts, finish,
                        _decode_usage(_get(body, "usageMetadata")))  # fmt: skip

    def event_decoder(self) -> _StreamDecoder:
        return _StreamDecoder()

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-goog-api-key": key}

    def count_request(self, inbound: Codec, payload: dict[str, Any], raw: bytes | bytearray, model: str
                      ) -> tuple[str, bytes | bytearray]:  # fmt: skip
        """``countTokens``: a Gemini client's body as sent, another's as the generate request it would make."""
        path = f"{self._path_prefix}/{model.removeprefix('models/')}:countTokens"
        if inbound.name == GeminiCodec.name:
            return path, raw
        request = inbound.decode_request({"max_tokens": 1, **payload})
        request.model = model
        generate = orjson.loads(self.encode_request(request))
        generate.pop("generationConfig", None)
        return path, orjson.dumps(self._count_body(generate, model))

    def _count_body(self, generate: dict[str, Any], model: str) -> dict[str, Any]:
        """Gemini wants the request's fields wrapped; Vertex counts them as they are."""
        return {"generateContentRequest": {"model": f"models/{model}", **generate}}

    def count_of(self, body: dict[str, Any]) -> int | None:
        count = body.get("totalTokens")
        return count if isinstance(count, int) else None


class VertexCodec(GeminiCodec):
    """Gemini on Vertex AI (``aiplatform.googleapis.com``): the same wire format. In API-key express mode the key is
    Google's header; at a project's endpoint it is an OAuth access token, and ``claude-*`` models are Anthropic's
    (``rawPredict``, :class:`VertexClaudeCodec`)."""

    name = "vertex"
    default_base_url = "https://aiplatform.googleapis.com"
    _path_prefix = "/v1/publishers/google/models"
    embeddings: EmbeddingsWire | None = VertexEmbeddings()  # ``predict``, not ``batchEmbedContents``
    bearer = False  # a project endpoint: the key is an access token
    claude: Codec | None = None
    scope = ""  # "projects/P/locations/L": a project's endpoints carry it in the path

    def for_entry(self, entry: object) -> Self:
        scope = getattr(entry, "scope", None)  # config.VertexCredential's, when it names a project
        if not scope:
            return self
        codec = copy.copy(self)
        codec.bearer, codec.claude, codec.scope = True, VertexClaudeCodec(), scope
        return codec

    def locate(self, path: str, model: str) -> str:
        return path.replace("/v1/publishers/", f"/v1/{self.scope}/publishers/", 1) if self.scope else path

    def for_model(self, model: str) -> Codec:
        if self.claude is not None and model.startswith("claude-"):
            return self.claude
        return self

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if self.bearer else super().auth_headers(key)

    def _count_body(self, generate: dict[str, Any], model: str) -> dict[str, Any]:
        return generate


# -- streams --------------------------------------------------------------------------------------------


class _StreamDecoder:
    """Each SSE event is a whole GenerateContentResponse chunk; usage accumulates and rides on the Finish."""

    def __init__(self) -> None:
        self.started = False
        self.calls = 0
        self.finished = False
        self.usage: Usage | None = None

    def feed(self, event: str | None, data: bytes) -> list[Event]:
        if not data.strip():
            return []
        chunk = orjson.loads(data)
        error = chunk.get("error") if isinstance(chunk, dict) else None
        if isinstance(error, dict):
            code = error.get("code")
            return [StreamError(code if isinstance(code, int) else 502, str(error.get("message", "upstream error")))]
        events: list[Event] = []
        if not self.started:
            self.started = True
            events.append(MessageStart(str(_get(chunk, "responseId") or ""), str(_get(chunk, "modelVersion") or "")))
        candidate = _candidate(chunk)
        for index, part in enumerate(_candidate_parts(candidate)):
            events.extend(self._part(part, f"candidates[0].content.parts[{index}]"))
        meta = _get(chunk, "usageMetadata")
        if isinstance(meta, dict):
            self.usage = _decode_usage(meta)
        reason = candidate.get("finishReason")
        if (reason or _blocked(chunk)) and not self.finished:
            self.finished = True
            finish = "content_filter" if _blocked(chunk) else _finish(reason, self.calls > 0)
            events.append(Finish(finish, self.usage))
        elif self.finished and isinstance(meta, dict):
            events.append(Finish(None, self.usage))  # usage that trails the finish
        return events

    def _part(self, part: dict[str, Any], where: str) -> list[Event]:
        events: list[Event] = []
        for item in _decode_part(part, where, _new_call_id, strict=False):
            if isinstance(item, Thinking):
                events.append(ThinkingDelta(item.text, item.signature))
            elif isinstance(item, Text):
                events.append(TextDelta(item.text))
            elif isinstance(item, ToolCall):  # Gemini sends each call whole, in one chunk
                events += [ToolCallStart(self.calls, item.id, item.name), ToolCallDelta(self.calls, item.arguments)]
                self.calls += 1
            # an image (from an image-generating model) has no canonical stream event: it is left out
        return events


class _StreamEncoder:
    """Canonical events as Gemini chunks.

    A tool call goes out whole, once no more argument pieces can follow (any event other than a tool-call start
    or delta: calls are held together, so interleaved deltas of parallel calls stay whole too). The finish waits
    for usage, which OpenAI-shaped upstreams send after it, so that the last chunk carries both, as Gemini's does.
    """

    def __init__(self, model: str) -> None:
        self.id = ""
        self.model = model
        self.calls: dict[int, ToolCall] = {}
        self.signature: str | None = None
        self.finish: FinishReason | None = None
        self.finish_sent = False
        self.usage: Usage | None = None
        self.usage_sent = False

    def _chunk(self, parts: list[dict[str, Any]], finish: FinishReason | None = None, usage: bool = False) -> bytes:
        candidate: dict[str, Any] = {"index": 0}
        if parts:
            if self.signature is not None:  # a signature rides on the next part, as Gemini sends it
                parts[0].setdefault("thoughtSignature", self.signature)
                self.signature = None
            candidate["content"] = {"role": "model", "parts": parts}
        if finish is not None:
            candidate["finishReason"] = _FINISH_OUT[finish]
        chunk: dict[str, Any] = {"candidates": [candidate], "modelVersion": self.model, "responseId": self.id}
        if usage and self.usage is not None:
            chunk["usageMetadata"] = _encode_usage(self.usage)
            self.usage_sent = True
        return b"data: " + orjson.dumps(chunk) + b"\r\n\r\n"

    def _error(self, status: int, message: str) -> bytes:
        return b"data: " + orjson.dumps(_error_body(status, message)) + b"\r\n\r\n"

    def _flush_calls(self) -> bytes:
        if not self.calls:
            return b""
        calls, self.calls = self.calls, {}
        parts = []
        for index in sorted(calls):
            call = calls[index]
            try:
                args = _args(call.arguments, f"tool call {index}")
            except TranslationError as exc:  # the model's own malformed arguments: nothing a client can use
                return self._error(502, str(exc))
            parts.append({"functionCall": {"id": call.id, "name": call.name, "args": args}})
        return self._chunk(parts)

    def _flush(self) -> bytes:
        """Everything held back: tool calls, then the finish."""
        out = self._flush_calls()
        if self.finish is not None:
            out += self._chunk([], self.finish, usage=True)
            self.finish, self.finish_sent = None, True
        return out

    def _on_finish(self, event: Finish) -> bytes:
        out = self._flush_calls()
        if event.usage is not None:
            self.usage, self.usage_sent = event.usage, False
        if event.reason is not None:
            self.finish = event.reason
        if self.finish is not None and event.usage is not None:
            return out + self._flush()
        if self.finish_sent and event.usage is not None:
            return out + self._chunk([], usage=True)  # usage that trails a finish already sent
        return out

    def encode(self, event: Event) -> bytes:
        if isinstance(event, ToolCallStart):
            self.calls[event.index] = ToolCall(event.id, event.name, "")
            return b""
        if isinstance(event, ToolCallDelta):
            if event.index in self.calls:
                self.calls[event.index].arguments += event.arguments
            return b""
        if isinstance(event, MessageStart):
            self.id, self.model = event.id, event.model or self.model
            self.usage = event.usage
            return b""
        if isinstance(event, Finish):
            return self._on_finish(event)
        out = self._flush()
        if isinstance(event, TextDelta):
            return out + (self._chunk([{"text": event.text}]) if event.text else b"")
        if isinstance(event, ThinkingDelta):
            signature = _untag(event.signature)
            if not event.text:
                self.signature = signature or self.signature
                return out
            part: dict[str, Any] = {"text": event.text, "thought": True}
            if signature is not None:
                part["thoughtSignature"] = signature
            return out + self._chunk([part])
        return out + self._error(event.status, event.message)

    def close(self) -> bytes:
        """Whatever is still held; Gemini streams just end, with no terminating event."""
        out = self._flush_calls()
        if self.signature is not None:
            out += self._chunk([{"text": ""}])  # a trailing signature, as Gemini sends one: on an empty text part
        out += self._flush()
        if not self.finish_sent and self.usage is not None and not self.usage_sent:
            out += self._chunk([], usage=True)
        return out
