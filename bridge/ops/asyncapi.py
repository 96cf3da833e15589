"""The AsyncAPI 3 document of every topic the bridge reads and writes (`epic-bridge asyncapi`).

Generated, never written by hand: the channels are the `*_topic` functions of `bridge.kafka.topics`
(the names the bridge itself uses), their address templates come from calling those functions with the
parameters as placeholders, the payloads reference the Avro schemas in `schemas/`, and the dead-letter
headers are the ones `bridge.sink.dlq` writes. A topic function added to topics.py appears as a channel
on the next generation (described by its docstring until it gets an entry in CHANNELS); a test
regenerates the document and compares it with docs/asyncapi.yaml, so the document cannot go stale.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge import __version__
from bridge.client.dlq import REASONS
from bridge.client.topics import RESOURCE_TYPES
from bridge.kafka import topics as topic_names
from bridge.kafka.topics import COMPACTED
from bridge.sink.decode import DeadLetter, DeadLetterReason
from bridge.sink.dlq import dead_letter_headers
from bridge.sink.model import Source

AVRO = "application/vnd.apache.avro;version=1.9.0"
PARAMETERS: dict[str, dict[str, Any]] = {
    "prefix": {"description": "The connection's topic_prefix (default `epic`).", "default": "epic"},
    "connection": {"description": "The connection's name (its config file's name, e.g. `local-sim`)."},
    "resource": {
        "description": "The lowercase FHIR resource type.",
        "enum": [r.lower() for r in RESOURCE_TYPES],
    },
}
DLQ_HEADERS = {
    "dlq.error.reason": "Why the record could not be handled: one of " + ", ".join(REASONS) + ".",
    "dlq.error.message": "What was wrong, in plain words (about the record's form, never its content).",
    "dlq.source.topic": "The topic the record was read from.",
    "dlq.source.partition": "Its partition (decimal).",
    "dlq.source.offset": "Its offset (decimal).",
    "dlq.connection": "The connection whose sink dead-lettered it.",
    "dlq.at": "When (ISO 8601, UTC).",
}


@dataclass(frozen=True)
class ChannelInfo:
    """What topics.py cannot say about a topic: its meaning, its records, and what the bridge does."""

    title: str
    description: str
    messages: Callable[[], dict[str, dict[str, Any]]]
    bridge_sends: bool = False
    bridge_receives: bool = False
    compacted: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)


def _avro(name: str, title: str, summary: str, key: str, schema_file: str) -> dict[str, Any]:
    return {
        "name": name,
        "title": title,
        "summary": summary,
        "contentType": "application/octet-stream",
        "payload": {"schemaFormat": AVRO, "schema": {"$ref": f"../schemas/{schema_file}"}},
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": key},
                "schemaIdLocation": "payload",
                "schemaIdPayloadEncoding": "confluent",
                "bindingVersion": "0.5.0",
            }
        },
    }


def _json(name: str, title: str, key: str, value: str) -> dict[str, Any]:
    return {
        "name": name,
        "title": title,
        "contentType": "application/json",
        "payload": {"type": "object", "description": value},
        "bindings": {"kafka": {"key": {"type": "string", "description": key}, "bindingVersion": "0.5.0"}},
    }


def _per_resource(kind: str, title: str, key: str) -> Callable[[], dict[str, dict[str, Any]]]:
    """One message per resource type, each on its own type's topic (`<resource>_<kind>.avsc`)."""

    def messages() -> dict[str, dict[str, Any]]:
        found = {}
        for r in RESOURCE_TYPES:
            name = f"{r}{kind.title()}"
            where = f"On <prefix>.<connection>.{r.lower()}.{kind}s only."
            found[name] = _avro(name, title.format(r=r), where, key.format(r=r), f"{r.lower()}_{kind}.avsc")
        return found

    return messages


def _one(name: str, title: str, summary: str, key: str, schema_file: str) -> Callable[[], dict[str, Any]]:
    return lambda: {name: _avro(name, title, summary, key, schema_file)}


def _internal(name: str, title: str, key: str, value: str) -> Callable[[], dict[str, dict[str, Any]]]:
    return lambda: {name: _json(name, title, f"{key} (JSON).", value)}


def _dead_letters() -> dict[str, dict[str, Any]]:
    sample = dead_letter_headers(DeadLetter(DeadLetterReason.EMPTY, ""), Source("", 0, 0, None), "")
    headers = {
        name: {"type": "string", "description": DLQ_HEADERS.get(name, "See bridge/sink/dlq.py.")}
        for name, _value in sample
    }
    return {
        "DeadLetter": {
            "name": "DeadLetter",
            "title": "A command or hint record the bridge could not handle",
            "summary": "The original record, bytes untouched, to be fixed and produced again.",
            "contentType": "application/octet-stream",
            "headers": {"type": "object", "required": list(headers), "properties": headers},
            "payload": {
                "type": "string",
                "format": "binary",
                "description": "The original value, unchanged.",
            },
            "bindings": {
                "kafka": {
                    "key": {"type": "string", "description": "The original key."},
                    "bindingVersion": "0.5.0",
                }
            },
        }
    }


CHANNELS: dict[str, ChannelInfo] = {
    "events_topic": ChannelInfo(
        "Change events",
        "Each created or updated resource Epic holds, detected by the bridge's pollers, exactly once: "
        "events, fingerprints and cursor of a batch commit in one transaction (read with "
        "isolation.level=read_committed). One topic per resource type, carrying that type's event only.",
        _per_resource("event", "{r} created or updated", "The {r}'s FHIR id."),
        bridge_sends=True,
    ),
    "commands_topic": ChannelInfo(
        "Commands",
        "CREATE, FIND and ENSURE commands from downstream teams, one topic per resource type (that type's "
        "command only). Each command id is run at most once and gets exactly one result.",
        _per_resource("command", "CREATE, FIND or ENSURE a {r}", "Any: the same key, the same order."),
        bridge_receives=True,
    ),
    "results_topic": ChannelInfo(
        "Command results",
        "One result per command, keyed like the command, written in the same transaction as the commands' "
        "offsets. A command's reply_topic can name another topic for its result, one the connection's "
        "sink.reply_topics allows.",
        _one(
            "CommandResult",
            "The one result of one command",
            "Also on a command's reply_topic.",
            "The command's key.",
            "command_result.avsc",
        ),
        bridge_sends=True,
    ),
    "dlq_topic": ChannelInfo(
        "Dead letters",
        "Command records that cannot be tied to a command id (undecodable, unknown schema, no id, too big), "
        "and hint records that cannot be read as a hint.",
        _dead_letters,
        bridge_sends=True,
    ),
    "hints_topic": ChannelInfo(
        "Change hints",
        "This patient's data probably changed: scan it soon. Written by other systems, and by the bridge's "
        "HL7v2 (MLLP) listener; read by the bridge, which only ever scans because of a hint (events still "
        "come from what the FHIR reads return).",
        _one(
            "Hint",
            "Scan this patient soon",
            "From other systems or the HL7v2 listener.",
            "The patient id or MRN (a patient's hints stay in order).",
            "hint.avsc",
        ),
        bridge_sends=True,
        bridge_receives=True,
    ),
    "offsets_topic": ChannelInfo(
        "Poll cursors (internal)",
        "Where each poll task resumes, and which bridge process owns each connection since when (key "
        '["<connection>","_owner"]). Internal: written and read only by the bridge.',
        _internal(
            "Cursor",
            "A poll task's cursor",
            '["<connection>","<task>"]',
            "The cursor (JSON); null deletes it.",
        ),
        bridge_sends=True,
        bridge_receives=True,
        compacted=True,
    ),
    "state_topic": ChannelInfo(
        "Published fingerprints (internal)",
        "What was published per resource, to tell CREATED from UPDATED from unchanged. Internal.",
        _internal(
            "Fingerprint",
            "The fingerprint last published for a resource",
            '["<connection>","<Type>","<id>"]',
            "The fingerprint (JSON).",
        ),
        bridge_sends=True,
        bridge_receives=True,
        compacted=True,
    ),
    "command_results_topic": ChannelInfo(
        "Command ledger (internal)",
        "The intent, then the result, of each command: a re-sent command id is answered from here. Internal.",
        _internal(
            "LedgerEntry",
            "A command's intent or result",
            '["<connection>","<command id>"]',
            "Intent or result (JSON).",
        ),
        bridge_sends=True,
        bridge_receives=True,
        compacted=True,
    ),
    "tasks_topic": ChannelInfo(
        "Connection ownership (internal)",
        "One empty, single-partition topic per connection. The bridge processes of a prefix form the "
        "consumer group epic-bridge.<prefix> subscribed to these topics: the process assigned a "
        "connection's partition runs that connection's work. No record is ever written; every transaction "
        "of the connection commits an offset for it (fencing). Internal.",
        dict,
        compacted=True,
    ),
}


def topic_functions() -> dict[str, Callable[..., str]]:
    """Every `*_topic` function of bridge.kafka.topics, in the order they are defined."""
    found = [
        (name, fn)
        for name, fn in vars(topic_names).items()
        if name.endswith("_topic") and inspect.isfunction(fn) and fn.__module__ == topic_names.__name__
    ]
    found.sort(key=lambda item: inspect.getsourcelines(item[1])[1])
    return dict(found)


def _channel_id(function_name: str) -> str:
    head = function_name.removesuffix("_topic").split("_")
    return head[0] + "".join(part.title() for part in head[1:])


def document() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for function_name, function in topic_functions().items():
        params = list(inspect.signature(function).parameters)
        address = function(*(f"{{{p}}}" for p in params))
        channel_id = _channel_id(function_name)
        info = CHANNELS.get(function_name)
        doc = (inspect.getdoc(function) or "").strip()
        channel: dict[str, Any] = {
            "address": address,
            "title": info.title if info else channel_id,
            "description": (info.description if info else doc or f"Topic {address}.")
            + f" (Name: bridge/kafka/topics.py {function_name}.)",
            "parameters": {p: {"$ref": f"#/components/parameters/{p}"} for p in params},
        }
        if info is not None:
            own = info.messages()
            messages.update(own)
            channel["messages"] = {m: {"$ref": f"#/components/messages/{m}"} for m in own}
            if info.compacted:
                config = {"cleanup.policy": [COMPACTED["cleanup.policy"]]}
                channel["bindings"] = {"kafka": {"topicConfiguration": config, "bindingVersion": "0.5.0"}}
            for action, applies in (("send", info.bridge_sends), ("receive", info.bridge_receives)):
                if applies:
                    verb = "writes" if action == "send" else "reads"
                    operations[f"{action}{channel_id[0].upper()}{channel_id[1:]}"] = {
                        "action": action,
                        "title": f"The bridge {verb}: {info.title.lower()}",
                        "channel": {"$ref": f"#/channels/{channel_id}"},
                        "messages": [{"$ref": f"#/channels/{channel_id}/messages/{m}"} for m in own],
                    }
        channels[channel_id] = channel
    used = sorted({p for c in channels.values() for p in c["parameters"]})
    return {
        "asyncapi": "3.1.0",
        "info": {
            "title": "epic-kafka-bridge",
            "version": __version__,
            "description": (
                "The Kafka topics of the Epic FHIR R4 <-> Kafka bridge, from the bridge's side: operations "
                "with action `send` are topics it writes, `receive` topics it reads. Values are Avro in "
                "Confluent wire format (magic byte, schema id, body), registered under `<topic>-value` with "
                "BACKWARD compatibility; the schemas are the .avsc files in schemas/. Internal topics are "
                "compacted and for the bridge alone. Generated by `epic-bridge asyncapi`; do not edit."
            ),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/octet-stream",
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "The local stack (stack/up, make run); any Kafka cluster serves.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "parameters": {
                p: PARAMETERS.get(p, {"description": f"The `{p}` part of the name."}) for p in used
            },
            "messages": messages,
        },
    }


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML; strings double-quoted with JSON escapes (valid YAML), keys quoted when needed."""
    pad = "  " * indent
    if isinstance(value, dict) and value:
        lines = []
        for key, item in value.items():
            name = key if _plain(key) else json.dumps(key)
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{name}:\n{to_yaml(item, indent + 1)}")
            else:
                lines.append(f"{pad}{name}: {_scalar(item)}")
        return "\n".join(lines)
    if isinstance(value, list) and value:
        lines = []
        for item in value:
            if isinstance(item, dict | list) and item:
                inner = to_yaml(item, indent + 1).lstrip()
                lines.append(f"{pad}- {inner}")
            else:
                lines.append(f"{pad}- {_scalar(item)}")
        return "\n".join(lines)
    return pad + _scalar(value)


def _plain(key: str) -> bool:
    return key.replace("_", "a").replace("-", "a").replace(".", "a").isalnum() and not key[0].isdigit()


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(value, ensure_ascii=False)


def render() -> str:
    return (
        "# Generated by `epic-bridge asyncapi` from bridge/kafka/topics.py and schemas/; do not edit.\n"
        + (to_yaml(document()) + "\n")
    )
