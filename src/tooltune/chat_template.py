"""A Jinja chat template that renders tooltune's text format (``chat_format``), for export.

A model tooltune trained reads only the prompt it was trained on, so an exported model carries
a template that rebuilds that prompt from ordinary chat messages: ``tokenizer.apply_chat_template(
messages, tools=tools, add_generation_prompt=True)`` gives exactly the text the rollout builds
(``rollout.opening_text``/``follow_text``), in the saved tool style, with the same tool-result
clipping. The template is made for one `PromptFormat` (its tool style and
``max_observation_chars``) and written with ``-`` whitespace control throughout, so it renders
the same with or without transformers' ``trim_blocks``/``lstrip_blocks``.

How messages map onto tooltune's turns:

- ``tools``: OpenAI tool entries (or bare functions) listed in the system turn as the style does.
- A leading ``system`` message replaces the built-in instructions (``json`` and ``compact``); the
  ``names`` style was trained without instructions, so the template refuses one there.
- ``assistant``: ``reasoning_content`` as ``<think>...</think>``, then ``content``, then each of
  ``tool_calls`` as ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``, joined by newlines
  (``render_action``). Arguments given as a dict render exactly as tooltune does; a string (the
  OpenAI form) is inserted as it is.
- ``tool``: consecutive tool messages form one tool turn, one ``<tool_response>`` block each
  (``format_observation``). ``content`` is the tool's result: a JSON value, or a string that reads
  as one (an object, an array, a number, true/false/null: what ``messages.trajectory_to_messages``
  writes), is the result itself; other text is a string result; ``Error: ...`` is a failed call.
  The name comes from ``name`` or, without one, from the assistant's call at the same position.
"""

from __future__ import annotations

import json

from tooltune.chat_format import SYSTEM_INSTRUCTIONS, TOOL_STYLES
from tooltune.messages import ERROR_PREFIX
from tooltune.prompt_format import PromptFormat

# Placeholders __STYLE__, __MAX_CHARS__, __INSTRUCTIONS__ and __ERROR__ are filled by
# `chat_template`; the markers are chat_format's (a test renders against it, so they cannot drift).
_TEMPLATE = r"""{#- tooltune chat template: tool style __STYLE__ (see tooltune.chat_template) -#}
{%- set ns = namespace(instructions=__INSTRUCTIONS__, parts=[], calls=[], k=0, open=false) -%}
{%- set tool_list = tools if tools else [] -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- if '__STYLE__' == 'names' -%}
{{- raise_exception('this model was trained on the names tool style, which has no instructions: pass no system message') -}}
{%- endif -%}
{%- set ns.instructions = messages[0]['content'] -%}
{%- endif -%}
{{- '<|im_start|>system\n' -}}
{%- if '__STYLE__' == 'names' -%}
{{- '<tools>\n' -}}
{%- for tool in tool_list -%}
{%- set fn = tool['function'] if 'function' in tool else tool -%}
{{- (', ' if not loop.first else '') ~ fn['name'] -}}
{%- endfor -%}
{%- else -%}
{{- ns.instructions ~ '\n<tools>\n' -}}
{%- for tool in tool_list -%}
{{- '\n' if not loop.first else '' -}}
{%- if '__STYLE__' == 'json' -%}
{{- tool | tojson -}}
{%- else -%}
{%- set fn = tool['function'] if 'function' in tool else tool -%}
{%- set schema = fn['parameters'] if 'parameters' in fn else {} -%}
{%- set required = schema['required'] if 'required' in schema else [] -%}
{%- set props = schema['properties'] if 'properties' in schema else {} -%}
{{- fn['name'] ~ '(' -}}
{%- for pname, info in props.items() -%}
{%- set options = info['anyOf'] if 'anyOf' in info and 'enum' not in info else [info] -%}
{%- set ns_kind = namespace(text='') -%}
{%- for option in options -%}
{%- if 'enum' in option -%}
{%- set kind = option['enum'] | map('tojson', ensure_ascii=True) | join('|') -%}
{%- elif 'type' in option -%}
{%- set kind = option['type'] if option['type'] is string else option['type'] | join('|') -%}
{%- else -%}
{%- set kind = 'any' -%}
{%- endif -%}
{%- set ns_kind.text = ns_kind.text ~ ('|' if not loop.first else '') ~ kind -%}
{%- endfor -%}
{{- (', ' if not loop.first else '') ~ pname ~ ('' if pname in required else '?') ~ ': ' ~ ns_kind.text -}}
{%- endfor -%}
{%- set description = fn['description'] if 'description' in fn else '' -%}
{%- set description = description.replace('e.g. ', 'e.g.\x1f').replace('i.e. ', 'i.e.\x1f') -%}
{{- ') - ' ~ description.split('. ')[0].rstrip('.').replace('\x1f', ' ') -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{{- '\n</tools><|im_end|>\n' -}}
{%- for message in messages -%}
{%- if loop.first and message['role'] == 'system' -%}
{%- elif message['role'] == 'tool' -%}
{{- '\n' if ns.open else '<|im_start|>tool\n' -}}
{%- set ns.open = true -%}
{%- set name = message['name'] if message.get('name') else '' -%}
{%- if not name and ns.k < ns.calls | length -%}
{%- set call = ns.calls[ns.k] -%}
{%- set name = (call['function'] if 'function' in call else call)['name'] -%}
{%- endif -%}
{%- set ns.k = ns.k + 1 -%}
{%- set value = message['content'] if message['content'] is defined else none -%}
{%- set key = 'result' -%}
{%- set raw = false -%}
{%- if value is string and value.startswith('__ERROR__') -%}
{%- set key = 'error' -%}
{%- set value = value[__ERROR_LEN__:] -%}
{%- set text = value -%}
{%- elif value is string -%}
{%- set text = value -%}
{%- set raw = (value[:1] == '{' and value[-1:] == '}') or (value[:1] == '[' and value[-1:] == ']') or value in ['true', 'false', 'null'] or (value not in ['nan', 'inf', '-inf'] and ((value | int | string) == value or (value | float | string) == value)) -%}
{%- else -%}
{%- set text = value | tojson -%}
{%- set raw = true -%}
{%- endif -%}
{%- if text | length > __MAX_CHARS__ -%}
{%- set shown = (text[:__MAX_CHARS__] ~ '... [' ~ (text | length - __MAX_CHARS__) ~ ' more characters cut]') | tojson -%}
{%- elif raw -%}
{%- set shown = text -%}
{%- else -%}
{%- set shown = value | tojson -%}
{%- endif -%}
{{- '<tool_response>{"name": ' ~ (name | tojson) ~ ', "' ~ key ~ '": ' ~ shown ~ '}</tool_response>' -}}
{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}
{{- '<|im_end|>\n' -}}
{%- set ns.open = false -%}
{%- endif -%}
{%- elif message['role'] == 'assistant' -%}
{%- set ns.parts = [] -%}
{%- if message.get('reasoning_content') -%}
{%- set ns.parts = ns.parts + ['<think>' ~ message['reasoning_content'] ~ '</think>'] -%}
{%- endif -%}
{%- if message.get('content') -%}
{%- set ns.parts = ns.parts + [message['content']] -%}
{%- endif -%}
{%- set ns.calls = message.get('tool_calls') or [] -%}
{%- set ns.k = 0 -%}
{%- for call in ns.calls -%}
{%- set fn = call['function'] if 'function' in call else call -%}
{%- set arguments = fn['arguments'] if 'arguments' in fn else {} -%}
{%- set arguments = arguments if arguments is string else arguments | tojson -%}
{%- set body = '{"name": ' ~ (fn['name'] | tojson) ~ ', "arguments": ' ~ arguments ~ '}' -%}
{%- set body = body.replace('</tool_call>', '<\\/tool_call>').replace('<think>', '\\u003cthink>').replace('</think>', '\\u003c/think>').replace('<|', '\\u003c|') -%}
{%- set ns.parts = ns.parts + ['<tool_call>' ~ body ~ '</tool_call>'] -%}
{%- endfor -%}
{{- '<|im_start|>assistant\n' ~ (ns.parts | join('\n')) ~ '<|im_end|>\n' -}}
{%- else -%}
{{- '<|im_start|>' ~ message['role'] ~ '\n' ~ message['content'] ~ '<|im_end|>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"""


def chat_template(fmt: PromptFormat) -> str:
    """The Jinja template that renders chat messages as a model of format `fmt` was trained."""
    if fmt.chat != "tooltune":  # pragma: no cover - the only chat format so far
        raise ValueError(f"no template for the {fmt.chat!r} chat format")
    if fmt.tool_style == "native":
        raise ValueError(
            "a model prompted through its own chat template (tool style native) keeps that "
            "template: export the tokenizer's chat_template as it is"
        )
    if fmt.tool_style not in TOOL_STYLES:  # pragma: no cover - PromptFormat checks it
        raise ValueError(f"unknown tool style {fmt.tool_style!r}")
    filled = {
        "__STYLE__": fmt.tool_style,
        "__MAX_CHARS__": str(int(fmt.max_observation_chars)),
        "__INSTRUCTIONS__": _jinja_string(SYSTEM_INSTRUCTIONS),
        "__ERROR_LEN__": str(len(ERROR_PREFIX)),
        "__ERROR__": ERROR_PREFIX,
    }
    text = _TEMPLATE
    for placeholder, value in filled.items():
        text = text.replace(placeholder, value)
    return text


def _jinja_string(text: str) -> str:
    """A Jinja string literal for `text` (Jinja reads backslash escapes as Python does)."""
    return json.dumps(text, ensure_ascii=True)
