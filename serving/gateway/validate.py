"""Request checks done by the gateway before an engine sees anything (400s with the field named).

Parameters the gateway does not know pass through to vLLM, which validates them itself (its
4xx answers are already OpenAI-shaped and are passed back unchanged).
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import Request

from llmops.contracts import TEXT_PART_KEYS
from serving.config import LimitsConfig
from serving.gateway.errors import APIError, bad_request

ROLES = {"system", "user", "assistant", "tool", "developer", "function"}


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object. Raises APIError 413 / 400."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise APIError(413, f"Request body of {declared} bytes exceeds the limit of {max_bytes} bytes.",
                       code="request_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > max_bytes:
            raise APIError(413, f"Request body exceeds the limit of {max_bytes} bytes.",
                           code="request_too_large")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"The request body is not valid JSON: {e}.", code="invalid_json") from e
    except RecursionError as e:
        raise APIError(400, "The request body is nested too deeply.", code="invalid_json") from e
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    return data


def _number(body: dict, name: str, lo: float, hi: float, integer: bool = False) -> None:
    if name not in body or body[name] is None:
        return
    v = body[name]
    ok_type = isinstance(v, int) if integer else isinstance(v, int | float)
    if isinstance(v, bool) or not ok_type or (isinstance(v, float) and not math.isfinite(v)):
        kind = "an integer" if integer else "a number"
        raise bad_request(f"'{name}' must be {kind}, got {json.dumps(v)[:40]}.", name, "invalid_type")
    if not lo <= v <= hi:
        raise bad_request(f"'{name}' must be between {lo:g} and {hi:g}, got {v}.", name)


def common(body: dict, limits: LimitsConfig) -> int:
    """Check sampling parameters; return max_tokens (filled in when absent)."""
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    _number(body, "n", 1, limits.max_n, integer=True)
    _number(body, "max_tokens", 1, limits.max_tokens_cap, integer=True)
    _number(body, "max_completion_tokens", 1, limits.max_tokens_cap, integer=True)
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise bad_request("'stream' must be true or false.", "stream", "invalid_type")
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise bad_request("'stream_options' must be an object.", "stream_options", "invalid_type")
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (
            isinstance(stop, list) and all(isinstance(s, str) for s in stop))):
        raise bad_request("'stop' must be a string or a list of strings.", "stop", "invalid_type")
    _at_most(stop if isinstance(stop, list) else [], limits.max_stop, "stop")
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        raise bad_request("'tools' must be a list of objects.", "tools", "invalid_type")
    _at_most(tools or [], limits.max_tools, "tools")
    bias = body.get("logit_bias")
    if isinstance(bias, dict):
        _at_most(list(bias), limits.max_logit_bias, "logit_bias")
    rf = body.get("response_format")
    if rf is not None and len(json.dumps(rf)) > limits.max_response_format_bytes:
        raise bad_request(f"'response_format' is larger than {limits.max_response_format_bytes} bytes.",
                          "response_format", "too_large")
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or limits.default_max_tokens
    return int(max_tokens)


def _at_most(items: list, cap: int, param: str) -> None:
    if len(items) > cap:
        raise bad_request(f"'{param}' has {len(items)} entries; at most {cap} are accepted.", param, "too_many")


def template_fields(body: dict) -> None:
    """Request fields that would put text into the prompt around the guardrails are refused: a client's own
    ``chat_template`` (any text), ``documents`` (send retrieved passages as text parts marked
    ``llmops_context``), and ``chat_template_kwargs`` values other than true/false/numbers."""
    if body.get("chat_template") is not None:
        raise bad_request("'chat_template' is not accepted by the gateway: the model's own template is used.",
                          "chat_template", "unsupported_field")
    if body.get("documents") is not None:
        raise bad_request("'documents' is not accepted by the gateway: send retrieved passages as text parts "
                          "marked {\"llmops_context\": true} (see docs/guardrails.md).", "documents",
                          "unsupported_field")
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None and (not isinstance(kwargs, dict) or not all(
            isinstance(v, bool | int | float) and not isinstance(v, str) for v in kwargs.values())):
        raise bad_request("'chat_template_kwargs' values must be true/false or numbers (e.g. enable_thinking).",
                          "chat_template_kwargs", "invalid_type")


def chat_messages(body: dict, max_messages: int = 512) -> list[dict]:
    """Validate ``messages``. Raises APIError 400 naming the message and field."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects.", "messages",
                          "invalid_messages")
    _at_most(messages, max_messages, "messages")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"{where} must be an object with 'role' and 'content'.", where, "invalid_messages")
        if m.get("role") not in ROLES:
            raise bad_request(f"{where}.role must be one of {', '.join(sorted(ROLES))}; got "
                              f"{json.dumps(m.get('role'))[:40]}.", f"{where}.role", "invalid_messages")
        content = m.get("content")
        if content is None and m.get("role") == "assistant" and m.get("tool_calls"):
            continue
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or "type" not in part:
                    raise bad_request(f"{where}.content[{j}] must be an object with a 'type'.",
                                      f"{where}.content", "invalid_messages")
                text_key = TEXT_PART_KEYS.get(part["type"])
                if text_key and not isinstance(part.get(text_key), str):
                    raise bad_request(f"{where}.content[{j}].{text_key} must be a string.", f"{where}.content",
                                      "invalid_messages")
        elif not isinstance(content, str):
            raise bad_request(f"{where}.content must be a string or a list of content parts.",
                              f"{where}.content", "invalid_messages")
    return messages


def completion_prompts(body: dict, max_prompts: int = 64) -> list[str | list[int]]:
    """Validate ``prompt`` (string, list of strings, token ids or lists of token ids)."""
    p = body.get("prompt")
    if isinstance(p, str):
        return [p]
    if isinstance(p, list) and p and not all(isinstance(x, int) for x in p):
        _at_most(p, max_prompts, "prompt")
    if isinstance(p, list) and p:
        if all(isinstance(x, str) for x in p):
            return list(p)
        if all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in p):
            return [p]
        if all(isinstance(x, list) and x and all(isinstance(t, int) and t >= 0 for t in x) for x in p):
            return list(p)
    raise bad_request("'prompt' must be a string, a list of strings, or token ids.", "prompt",
                      "invalid_prompt")
