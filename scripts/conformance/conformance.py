#!/usr/bin/env python3
"""Conformance test of `keylife serve` with Exoscale's own Python client (exoscale==0.16.4).

Every call goes through `exoscale.api.v2.Client(key, secret, url=...)`, except the few
authentication refusals that the client cannot produce (no Authorization header, an expired or
too long signature), which are sent with `requests` and signed with `exoscale_auth`.

Every 2xx body is validated against the operation's response schema in the OpenAPI spec shipped
in the `exoscale` package (the spec of /work/shared/reference is extracted from it), and every
error against `error-response`, as an `application/problem+json` document whose `status` is
the HTTP status. The semantics checked are those of the lifecycle contract (lifecycle.md).

Two phases, run by scripts/conformance/run.sh against one data directory:

- `first`: all 16 operations and the main refusals, on two zones; writes a state file
  (keys, a snapshot of every key in every zone, ciphertexts with their plaintexts);
- `after-restart`: after the server was stopped with SIGTERM and started again, every key and
  its state are as they were, every old ciphertext still decrypts, replication still works.

With `--separate-processes` (each zone served by its own `keylife serve`, linked by `--peer`),
the same two phases (the health check then expects one zone per process), and two more after
them, around a crash of the replica zone's process:

- `target-down`: the replica zone's process was killed (SIGKILL); the origin answers
  replicate-key, rotation, rotation settings, a deletion scheduled and cancelled, and crypto,
  and its replicas-status shows `last-failure` with `zone ... is unreachable`;
- `target-back`: the replica process was started again: every replica converges to its
  origin's latest revision, follows it (a new replica, versions, rotation settings, the missed
  scheduled-and-cancelled deletion), every ciphertext decrypts in both zones, and a deletion
  scheduled and cancelled now reaches the replica.

Exit status 0 when every check passed, 1 otherwise; the failures are listed with the request,
what was expected and what came back.
"""

import argparse
import base64
import calendar
import json
import os
import re
import sys
import time
import traceback
import uuid
from collections import Counter
from pathlib import Path

import exoscale
import requests
from exoscale.api.exceptions import (
    ExoscaleAPIAuthException,
    ExoscaleAPIClientException,
    ExoscaleAPIException,
)
from exoscale.api.v2 import Client
from exoscale_auth import ExoscaleV2Auth

# The 16 operations of the KMS API (operationIds of the spec).
OPERATIONS = [
    "create-kms-key",
    "list-kms-keys",
    "get-kms-key",
    "enable-kms-key",
    "disable-kms-key",
    "rotate-kms-key",
    "enable-kms-key-rotation",
    "disable-kms-key-rotation",
    "list-kms-key-rotations",
    "schedule-kms-key-deletion",
    "cancel-kms-key-deletion",
    "replicate-kms-key",
    "encrypt",
    "decrypt",
    "re-encrypt",
    "generate-data-key",
]

DAY = 86400
# How long to wait for asynchronous replication.
REPLICATION_TIMEOUT = 20.0


def b64(data):
    return base64.b64encode(data).decode("ascii")


def unb64(text):
    return base64.b64decode(text, validate=True)


# ---------------------------------------------------------------------------------------------
# Timestamps (RFC 3339, UTC)

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_ts(text):
    """Seconds since the epoch (float) of an RFC 3339 timestamp; ValueError if malformed."""
    match = _RFC3339.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
        raise ValueError(f"not a calendar date: {text!r}")
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError(f"not a clock time: {text!r}")
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if match.group(7):
        seconds += float("0" + match.group(7))
    offset = match.group(8)
    if offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        seconds -= sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
    return seconds


def is_utc(text):
    return isinstance(text, str) and (text.endswith(("Z", "z", "+00:00")))


# ---------------------------------------------------------------------------------------------
# A validator for the subset of OpenAPI 3.0 schemas the KMS spec uses


class SchemaValidator:
    """type, required, properties, items, enum, format (uuid, date-time, byte, uri-reference),
    minimum/maximum, nullable and $ref. Properties that the schema does not name are allowed
    (as in JSON Schema) but collected in `undocumented`, for the report."""

    _UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
    _BASE64 = re.compile(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")

    def __init__(self, spec):
        self.spec = spec
        self.undocumented = set()

    def resolve(self, schema):
        while "$ref" in schema:
            ref = schema["$ref"]
            if not ref.startswith("#/"):
                raise ValueError(f"unsupported $ref {ref}")
            node = self.spec
            for part in ref[2:].split("/"):
                node = node[part]
            schema = node
        return schema

    def response_schema(self, operation_id, status="200"):
        for item in self.spec["paths"].values():
            for operation in item.values():
                if isinstance(operation, dict) and operation.get("operationId") == operation_id:
                    content = operation["responses"][status]["content"]
                    return content["application/json"]["schema"]
        raise KeyError(operation_id)

    def validate(self, schema, value, where="$"):
        """The list of violations (empty if `value` conforms)."""
        errors = []
        self._validate(schema, value, where, errors)
        return errors

    def _validate(self, schema, value, where, errors):
        name = schema.get("$ref", "").rsplit("/", 1)[-1]
        schema = self.resolve(schema)
        if value is None:
            if not schema.get("nullable"):
                errors.append(f"{where}: null where the schema does not allow it")
            return
        kind = schema.get("type")
        if kind == "object":
            if not isinstance(value, dict):
                errors.append(f"{where}: expected an object, got {type(value).__name__}")
                return
            for field in schema.get("required", []):
                if field not in value:
                    errors.append(f"{where}: required property {field!r} is missing")
            properties = schema.get("properties", {})
            for field, item in value.items():
                if field in properties:
                    self._validate(properties[field], item, f"{where}.{field}", errors)
                else:
                    self.undocumented.add(f"{name or where}.{field}")
        elif kind == "array":
            if not isinstance(value, list):
                errors.append(f"{where}: expected an array, got {type(value).__name__}")
                return
            for index, item in enumerate(value):
                self._validate(schema.get("items", {}), item, f"{where}[{index}]", errors)
        elif kind == "string":
            if not isinstance(value, str):
                errors.append(f"{where}: expected a string, got {value!r}")
                return
            self._format(schema.get("format"), value, where, errors)
        elif kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                errors.append(f"{where}: expected an integer, got {value!r}")
                return
        elif kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                errors.append(f"{where}: expected a number, got {value!r}")
                return
        elif kind == "boolean":
            if not isinstance(value, bool):
                errors.append(f"{where}: expected a boolean, got {value!r}")
                return
        elif kind is not None:
            errors.append(f"{where}: the validator does not know type {kind!r}")
            return
        if "enum" in schema and value not in schema["enum"]:
            errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
        if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
            errors.append(f"{where}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and isinstance(value, (int, float)) and value > schema["maximum"]:
            errors.append(f"{where}: {value} is above the maximum {schema['maximum']}")

    def _format(self, fmt, value, where, errors):
        if fmt == "uuid":
            if not self._UUID.match(value):
                errors.append(f"{where}: {value!r} is not a UUID")
        elif fmt == "date-time":
            try:
                parse_ts(value)
                if not is_utc(value):
                    errors.append(f"{where}: {value!r} is not UTC (lifecycle.md: RFC 3339 UTC)")
            except ValueError as error:
                errors.append(f"{where}: {error}")
        elif fmt == "byte":
            if not self._BASE64.match(value):
                errors.append(f"{where}: {value[:40]!r} is not base64 with padding")
        elif fmt == "uri-reference":
            if not value or any(c.isspace() for c in value):
                errors.append(f"{where}: {value!r} is not a URI reference")


# ---------------------------------------------------------------------------------------------
# Checks


class Abort(Exception):
    """A step whose result the rest of its section needs failed: the section stops."""


class Needs(dict):
    """The keys and values the sections pass on: one that an earlier failed step did not make
    stops the section that needs it, without a traceback (the failure is already reported)."""

    def __missing__(self, name):
        raise Abort(f"needs {name!r}, which an earlier failed step did not make")


class Checks:
    def __init__(self):
        self.passed = 0
        self.failures = []
        self.exercised = Counter()  # operationId -> validated 2xx answers
        self.refused = Counter()  # operationId -> expected refusals seen
        self.section = "-"

    def check(self, condition, what, expected=None, got=None, request=None):
        if condition:
            self.passed += 1
            return True
        lines = [f"[{self.section}] {what}"]
        if request:
            lines.append(f"    request:  {request}")
        if expected is not None or got is not None:
            lines.append(f"    expected: {expected}")
            lines.append(f"    got:      {got}")
        message = "\n".join(lines)
        self.failures.append(message)
        print("FAIL " + message, flush=True)
        return False

    def require(self, condition, what, expected=None, got=None, request=None):
        if not self.check(condition, what, expected, got, request):
            raise Abort(f"a step failed: {what}")

    def close(self, a, b, tolerance, what, request=None):
        """Two timestamps (RFC 3339 strings or epoch seconds) within `tolerance` seconds."""
        try:
            ta = parse_ts(a) if isinstance(a, str) else a
            tb = parse_ts(b) if isinstance(b, str) else b
            ok = abs(ta - tb) <= tolerance
        except (TypeError, ValueError):
            ok = False
        return self.check(ok, what, f"{b} (within {tolerance} s)", a, request)


def describe(response):
    """`METHOD URL body` of the request behind a `requests` response."""
    request = response.request
    body = request.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if body and len(body) > 300:
        body = body[:300] + "..."
    return f"{request.method} {request.url}" + (f" {body}" if body else "")


class Zone:
    """One zone of the server, through Exoscale's client."""

    def __init__(self, checks, validator, name, url, key, secret):
        self.t = checks
        self.v = validator
        self.name = name
        self.url = url
        self.client = Client(key, secret, url=url)
        self.last = None
        self.client.http_client.hooks["response"].append(self._remember)

    def _remember(self, response, *args, **kwargs):
        self.last = response

    def _call(self, operation, kwargs):
        self.last = None
        method = getattr(self.client, operation.replace("-", "_"))
        return method(**kwargs)

    def ok(self, operation, **kwargs):
        """Calls `operation`, which must answer 200 with a body valid against its schema."""
        try:
            body = self._call(operation, kwargs)
        except ExoscaleAPIException as error:
            response = error.response
            request = describe(response) if response is not None else f"{operation} {kwargs}"
            got = f"{response.status_code} {response.text}" if response is not None else error
            self.t.require(False, f"{self.name}: {operation} succeeds", "200", got, request)
        response = self.last
        request = describe(response)
        self.t.check(response.status_code == 200, f"{self.name}: {operation} answers 200",
                     200, response.status_code, request)
        content_type = response.headers.get("Content-Type", "")
        self.t.check(content_type.split(";")[0].strip() == "application/json",
                     f"{self.name}: {operation} answers application/json",
                     "application/json", content_type, request)
        errors = self.v.validate(self.v.response_schema(operation), body)
        if self.t.check(not errors, f"{self.name}: {operation} answer matches its schema",
                        "no violation", "; ".join(errors) + f" in {body}", request):
            self.t.exercised[operation] += 1
        return body

    def refused(self, operation, status, code, field=None, mentions=(), **kwargs):
        """Calls `operation`, which must be refused with `status` and problem code `code`
        (and, for a bad request, a detail naming `field` and the words in `mentions`)."""
        try:
            body = self._call(operation, kwargs)
        except ExoscaleAPIException as raised:
            error = raised
            response = error.response
        else:
            self.t.check(False, f"{self.name}: {operation} is refused with {status} {code}",
                         f"{status} {code}", f"{self.last.status_code} {json.dumps(body)}",
                         describe(self.last))
            return None
        expected_class = ExoscaleAPIAuthException if status == 403 else ExoscaleAPIClientException
        self.t.check(isinstance(error, expected_class),
                     f"{self.name}: {operation}: the client raises {expected_class.__name__}",
                     expected_class.__name__, type(error).__name__, describe(response))
        problem = check_problem(self.t, self.v, response, status, code, field, mentions,
                                f"{self.name}: {operation}")
        self.t.refused[operation] += 1
        return problem

    def get(self, key_id):
        return self.ok("get-kms-key", id=key_id)


def check_problem(t, v, response, status, code, field, mentions, what):
    """An RFC 9457 problem document with the expected status and code."""
    request = describe(response)
    t.check(response.status_code == status, f"{what}: HTTP status {status}",
            status, f"{response.status_code} {response.text}", request)
    content_type = response.headers.get("Content-Type", "")
    t.check(content_type.split(";")[0].strip() == "application/problem+json",
            f"{what}: error is application/problem+json",
            "application/problem+json", content_type, request)
    try:
        problem = response.json()
    except ValueError:
        t.check(False, f"{what}: error body is JSON", "JSON", response.text, request)
        return None
    errors = v.validate({"$ref": "#/components/schemas/error-response"}, problem)
    t.check(not errors, f"{what}: error body matches error-response (type, title, status, detail)",
            "no violation", "; ".join(errors), request)
    if not isinstance(problem, dict):
        return None
    t.check(problem.get("status") == response.status_code,
            f"{what}: problem status equals the HTTP status",
            response.status_code, problem.get("status"), request)
    t.check(problem.get("code") == code, f"{what}: problem code {code}",
            code, f"{problem.get('code')} ({problem.get('detail')})", request)
    detail = problem.get("detail") or ""
    if field is not None:
        t.check(f"`{field}`" in detail or f"'{field}'" in detail or f'"{field}"' in detail
                or re.search(rf"(?<![\w.-]){re.escape(field)}(?![\w-])", detail) is not None,
                f"{what}: the detail names the field {field}", field, detail, request)
    for word in mentions:
        t.check(str(word) in detail, f"{what}: the detail mentions {word}", word, detail, request)
    return problem


class Following:
    """What the phases that check replication share: waiting for a replica (needs `t`, `a`,
    the origin zone, and `b`, the replica zone)."""

    def poll(self, what, probe, timeout=REPLICATION_TIMEOUT):
        """Calls `probe` until it returns a true value (then returned) or `timeout` passes."""
        deadline = time.time() + timeout
        last = None
        while True:
            try:
                last = probe()
            except ExoscaleAPIException as error:
                last = error
            if last and not isinstance(last, Exception):
                return last
            if time.time() > deadline:
                self.t.require(False, f"{what} within {timeout} s", "true", last)
            time.sleep(0.1)

    def converged(self, key_id, timeout=REPLICATION_TIMEOUT):
        """Waits until the origin's replicas-status says the replica applied its revision."""
        a = self.a

        def probe():
            got = a.get(key_id)
            states = {s["zone"]: s for s in got.get("replicas-status") or []}
            state = states.get(self.b.name)
            return got if state and state["last-applied-watermark"] == got["revision"]["seq"] else None

        return self.poll(f"the replica of {key_id} applies the origin's revision", probe, timeout)

    def schedule_and_cancel_followed(self, key_id, ciphertext, refused_at_replica):
        """Schedules the deletion of `key_id` at the origin and cancels it; checks that the
        replica follows both (pending deletion with the origin's delete-at, refusing decrypt
        and `refused_at_replica`, an operation id; then disabled). Returns the replica."""
        t, a, b = self.t, self.a, self.b
        scheduled = a.ok("schedule-kms-key-deletion", id=key_id, delay_days=7)
        replica = self.poll("the replica follows the origin's scheduled deletion",
                            lambda: (lambda r: r if r["status"] == "pending-deletion" else None)(b.get(key_id)))
        t.check(replica.get("delete-at") is not None
                and parse_ts(replica["delete-at"]) == parse_ts(scheduled["delete-at"]),
                "replica: delete-at as the origin's", scheduled["delete-at"], replica.get("delete-at"))
        b.refused("decrypt", 400, "key-pending-deletion", id=key_id, ciphertext=ciphertext)
        operation, status, code = refused_at_replica
        b.refused(operation, status, code, id=key_id)
        a.ok("cancel-kms-key-deletion", id=key_id)
        replica = self.poll("the replica follows the origin's cancellation",
                            lambda: (lambda r: r if r["status"] != "pending-deletion" else None)(b.get(key_id)))
        t.check(replica["status"] == "disabled", "replica: disabled after the origin's cancellation",
                "disabled", replica["status"])
        return replica

    def _exists(self, zone, key_id):
        try:
            zone.client.get_kms_key(id=key_id)
            return True
        except ExoscaleAPIClientException:
            return False


# ---------------------------------------------------------------------------------------------
# Phase one


class FirstPhase(Following):
    def __init__(self, t, v, zones, key, secret, state_path, separate=False):
        self.t = t
        self.v = v
        self.a, self.b = zones
        self.key = key
        self.secret = secret
        self.state_path = state_path
        self.separate = separate
        self.suffix = uuid.uuid4().hex[:8]
        self.keys = Needs()  # label -> id
        self.made = Needs()  # what one section leaves for another
        self.ciphertexts = []  # {zones, key, ciphertext, context, plaintext}

    def name(self, label):
        return f"conformance-{label}-{self.suffix}"

    def seq(self, zone, key_id):
        return zone.get(key_id)["revision"]["seq"]

    def remember(self, zones, key_id, ciphertext, context, plaintext):
        self.ciphertexts.append({
            "zones": [z.name for z in zones],
            "key": key_id,
            "ciphertext": ciphertext,
            "context": None if context is None else b64(context),
            "plaintext": b64(plaintext),
        })

    def sections(self):
        return [
            ("create, list and get", self.create_list_get),
            ("encrypt, decrypt, generate-data-key", self.crypto),
            ("rotation", self.rotation),
            ("manual rotation limit", self.rotation_limit),
            ("re-encrypt", self.re_encrypt),
            ("enable and disable", self.enable_disable),
            ("scheduled deletion", self.deletion),
            ("ids", self.ids),
            ("replication", self.replication),
            ("authentication", self.authentication),
            ("snapshot for the restart", self.snapshot),
        ]

    # -- create, list, get ---------------------------------------------------------------------

    def create_list_get(self):
        t, a = self.t, self.a
        listed = a.ok("list-kms-keys")
        t.check(isinstance(listed.get("kms-keys"), list), "list-kms-keys answers a list")

        before = time.time()
        created = a.ok("create-kms-key", name=self.name("a"), description="conformance key A")
        key_id = created["id"]
        self.keys["a"] = key_id
        t.check(created["name"] == self.name("a"), "create: name as asked", self.name("a"), created["name"])
        t.check(created.get("description") == "conformance key A", "create: description as asked",
                "conformance key A", created.get("description"))
        t.check(created["status"] == "enabled", "create: a new key is enabled", "enabled", created["status"])
        t.check(created["usage"] == "encrypt-decrypt", "create: usage defaults to encrypt-decrypt",
                "encrypt-decrypt", created["usage"])
        t.check(created["source"] == "exoscale-kms", "create: source exoscale-kms", "exoscale-kms", created["source"])
        t.check(created["multi-zone"] is False, "create: multi-zone defaults to false", False, created["multi-zone"])
        t.check(created["origin-zone"] == a.name, "create: origin-zone is this zone", a.name, created["origin-zone"])
        t.check(key_id[14:15] == "7", "create: the id is a UUID v7", "version 7", key_id)
        t.close(created["created-at"], before, 60, "create: created-at is now")
        t.check(is_utc(created["created-at"]), "create: created-at is UTC", "...Z", created["created-at"])
        t.close(created["status-since"], created["created-at"], 1, "create: status-since is created-at")
        t.check(not created.get("replicas"), "create: no replicas", [], created.get("replicas"))

        got = a.get(key_id)
        for field in ("id", "name", "description", "usage", "source", "status", "multi-zone",
                      "origin-zone", "created-at", "status-since", "revision"):
            t.check(got.get(field) == created.get(field), f"get: {field} as created",
                    created.get(field), got.get(field))
        material = got["material"]
        t.check(material["version"] == 1, "get: material version 1", 1, material["version"])
        t.check(material["automatic"] is False, "get: material version 1 is not automatic",
                False, material["automatic"])
        t.close(material["created-at"], created["created-at"], 1, "get: material created with the key")
        rotation = got["rotation"]
        t.check(rotation["automatic"] is True, "get: rotation automatic by default", True, rotation["automatic"])
        t.check(rotation["rotation-period"] == 365, "get: rotation-period 365", 365, rotation["rotation-period"])
        t.check(rotation["manual-count"] == 0, "get: manual-count 0", 0, rotation["manual-count"])
        t.close(rotation["next-at"], parse_ts(created["created-at"]) + 365 * DAY, 1,
                "get: next-at is created-at + 365 days")
        t.check("delete-at" not in got, "get: no delete-at while not pending deletion", "absent", got.get("delete-at"))
        t.check(not got.get("replicas"), "get: no replicas", [], got.get("replicas"))

        listed = a.ok("list-kms-keys")["kms-keys"]
        entries = [entry for entry in listed if entry["id"] == key_id]
        if t.check(len(entries) == 1, "list-kms-keys lists the new key once", 1, len(entries)):
            entry = entries[0]
            for field in ("name", "status", "material", "rotation", "revision", "origin-zone", "multi-zone"):
                t.check(entry.get(field) == got.get(field), f"list entry: {field} as get",
                        got.get(field), entry.get(field))

        # Refusals of create.
        a.refused("create-kms-key", 400, "bad-request", field="name")  # no body: name required
        a.refused("create-kms-key", 409, "name-conflict", name=self.name("a"))
        a.refused("create-kms-key", 400, "bad-request", field="name", name="")
        a.refused("create-kms-key", 400, "bad-request", field="name", name="n" * 257)
        a.refused("create-kms-key", 400, "bad-request", field="description",
                  name=self.name("long-description"), description="d" * 1025)
        a.refused("create-kms-key", 400, "bad-request", field="usage", name=self.name("usage"),
                  usage="sign-verify")
        a.refused("create-kms-key", 400, "bad-request", field="multi-zone", name=self.name("mz"),
                  multi_zone="yes")
        described = a.ok("create-kms-key", name=self.name("b"), description="d" * 1024)
        t.check(described.get("description") == "d" * 1024, "create: a 1024-character description is accepted")
        self.keys["b"] = described["id"]
        edge = a.ok("create-kms-key", name="n" * 256)
        t.check(edge["name"] == "n" * 256, "create: a 256-character name is accepted")
        self.keys["long-name"] = edge["id"]

        # enable on an enabled key: already-applied, nothing changes.
        before = a.get(key_id)
        answer = a.ok("enable-kms-key", id=key_id)
        t.check(answer["status"] == "already-applied", "enable on an enabled key: already-applied",
                "already-applied", answer["status"])
        after = a.get(key_id)
        t.check(after["revision"] == before["revision"], "already-applied leaves revision as it is",
                before["revision"], after["revision"])

    # -- crypto --------------------------------------------------------------------------------

    def crypto(self):
        t, a = self.t, self.a
        key_id = self.keys["a"]
        plaintext = os.urandom(100)
        context = b"tenant=conformance"
        first = a.ok("encrypt", id=key_id, plaintext=b64(plaintext), encryption_context=b64(context))
        second = a.ok("encrypt", id=key_id, plaintext=b64(plaintext), encryption_context=b64(context))
        t.check(first["ciphertext"] != second["ciphertext"], "encrypt: two encryptions differ (random nonce)")
        self.remember([a], key_id, first["ciphertext"], context, plaintext)
        self.made["version 1 ciphertext"] = (first["ciphertext"], context, plaintext)
        got = a.ok("decrypt", id=key_id, ciphertext=first["ciphertext"], encryption_context=b64(context))
        t.check(unb64(got["plaintext"]) == plaintext, "decrypt returns the plaintext")

        # Absent and empty encryption contexts are the same.
        plain = a.ok("encrypt", id=key_id, plaintext=b64(b"no context"))
        got = a.ok("decrypt", id=key_id, ciphertext=plain["ciphertext"], encryption_context="")
        t.check(unb64(got["plaintext"]) == b"no context", "decrypt: empty context is the absent one")
        got = a.ok("decrypt", id=key_id, ciphertext=plain["ciphertext"], encryption_context=None)
        t.check(unb64(got["plaintext"]) == b"no context", "decrypt: a null context is the absent one")
        empty = a.ok("encrypt", id=key_id, plaintext=b64(b"empty context"), encryption_context="")
        got = a.ok("decrypt", id=key_id, ciphertext=empty["ciphertext"])
        t.check(unb64(got["plaintext"]) == b"empty context", "encrypt with an empty context, decrypt without")

        # One opaque error for a wrong context and a damaged ciphertext.
        a.refused("decrypt", 400, "invalid-ciphertext", id=key_id, ciphertext=first["ciphertext"],
                  encryption_context=b64(b"tenant=other"))
        a.refused("decrypt", 400, "invalid-ciphertext", id=key_id, ciphertext=first["ciphertext"])
        raw = bytearray(unb64(first["ciphertext"]))
        raw[-1] ^= 1
        a.refused("decrypt", 400, "invalid-ciphertext", id=key_id, ciphertext=b64(bytes(raw)),
                  encryption_context=b64(context))
        a.refused("decrypt", 400, "invalid-ciphertext", id=key_id,
                  ciphertext=b64(unb64(first["ciphertext"])[:12]), encryption_context=b64(context))

        # Bad base64 names its field.
        a.refused("encrypt", 400, "bad-request", field="plaintext", id=key_id, plaintext="not base64!")
        a.refused("encrypt", 400, "bad-request", field="encryption-context", id=key_id,
                  plaintext=b64(b"x"), encryption_context="%%%")
        a.refused("decrypt", 400, "bad-request", field="ciphertext", id=key_id, ciphertext="***")
        a.refused("encrypt", 400, "bad-request", field="plaintext", id=key_id)  # required

        # generate-data-key.
        for kwargs, size, what in (
            ({}, 32, "no key-spec nor bytes-count: AES-256, 32 bytes"),
            ({"key_spec": "AES-256"}, 32, "key-spec AES-256: 32 bytes"),
            ({"bytes_count": 16}, 16, "bytes-count 16: 16 bytes"),
            ({"bytes_count": 1}, 1, "bytes-count 1: 1 byte"),
            ({"bytes_count": 1024}, 1024, "bytes-count 1024: 1024 bytes"),
        ):
            data_key = a.ok("generate-data-key", id=key_id, **kwargs)
            clear = unb64(data_key["plaintext"])
            t.check(len(clear) == size, f"generate-data-key, {what}", size, len(clear))
            back = a.ok("decrypt", id=key_id, ciphertext=data_key["ciphertext"])
            t.check(unb64(back["plaintext"]) == clear,
                    f"generate-data-key, {what}: the ciphertext decrypts to the data key")
        data_key = a.ok("generate-data-key", id=key_id, bytes_count=16, encryption_context=b64(context))
        back = a.ok("decrypt", id=key_id, ciphertext=data_key["ciphertext"], encryption_context=b64(context))
        t.check(unb64(back["plaintext"]) == unb64(data_key["plaintext"]),
                "generate-data-key with a context: decrypts with that context")
        a.refused("decrypt", 400, "invalid-ciphertext", id=key_id, ciphertext=data_key["ciphertext"])
        a.refused("generate-data-key", 400, "bad-request", field="bytes-count", mentions=(1, 1024),
                  id=key_id, bytes_count=0)
        a.refused("generate-data-key", 400, "bad-request", field="bytes-count", mentions=(1, 1024),
                  id=key_id, bytes_count=1025)
        a.refused("generate-data-key", 400, "bad-request", id=key_id, key_spec="AES-256", bytes_count=16)
        a.refused("generate-data-key", 400, "bad-request", field="key-spec", id=key_id, key_spec="AES-128")

    # -- rotation ------------------------------------------------------------------------------

    def rotation(self):
        t, a = self.t, self.a
        key_id = self.keys["a"]
        before = a.get(key_id)
        rotated = a.ok("rotate-kms-key", id=key_id)["rotation"]
        t.check(rotated["manual-count"] == 1, "rotate: manual-count + 1", 1, rotated["manual-count"])
        t.check(rotated["next-at"] == before["rotation"]["next-at"], "rotate: next-at unchanged",
                before["rotation"]["next-at"], rotated["next-at"])
        t.check(rotated["automatic"] is True and rotated["rotation-period"] == 365,
                "rotate: rotation settings unchanged", before["rotation"], rotated)
        after = a.get(key_id)
        t.check(after["material"]["version"] == 2, "rotate: material version 2", 2, after["material"]["version"])
        t.check(after["material"]["automatic"] is False, "rotate: manual version is not automatic",
                False, after["material"]["automatic"])
        t.check(after["rotation"] == rotated, "get: rotation as rotate answered", rotated, after["rotation"])
        t.check(after["revision"]["seq"] == before["revision"]["seq"] + 1, "rotate: revision.seq + 1",
                before["revision"]["seq"] + 1, after["revision"]["seq"])
        t.check(parse_ts(after["revision"]["at"]) >= parse_ts(before["revision"]["at"]),
                "rotate: revision.at does not go back", f">= {before['revision']['at']}", after["revision"]["at"])

        rotations = a.ok("list-kms-key-rotations", id=key_id)["rotations"]
        t.check([(r["version"], r["automatic"]) for r in rotations] == [(2, False)],
                "list-key-rotations lists versions 2 and up", [(2, False)],
                [(r["version"], r["automatic"]) for r in rotations])
        if rotations:
            t.close(rotations[0]["rotated-at"], after["material"]["created-at"], 1,
                    "list-key-rotations: rotated-at is the version's creation")

        # Version 1 still decrypts; the newest encrypts.
        ciphertext, context, plaintext = self.made["version 1 ciphertext"]
        got = a.ok("decrypt", id=key_id, ciphertext=ciphertext, encryption_context=b64(context))
        t.check(unb64(got["plaintext"]) == plaintext, "after rotate: a version 1 ciphertext still decrypts")
        fresh = a.ok("encrypt", id=key_id, plaintext=b64(b"after rotation"))
        got = a.ok("decrypt", id=key_id, ciphertext=fresh["ciphertext"])
        t.check(unb64(got["plaintext"]) == b"after rotation", "after rotate: encrypt and decrypt")
        self.remember([a], key_id, fresh["ciphertext"], None, b"after rotation")

        # enable-key-rotation while automatic: conflict, nothing changes.
        seq = after["revision"]["seq"]
        a.refused("enable-kms-key-rotation", 409, "conflict", id=key_id)
        a.refused("enable-kms-key-rotation", 409, "conflict", id=key_id, rotation_period=365)
        t.check(self.seq(a, key_id) == seq, "a refused call leaves revision as it is", seq, self.seq(a, key_id))

        disabled = a.ok("disable-kms-key-rotation", id=key_id)["rotation"]
        t.check(disabled["automatic"] is False, "disable-key-rotation: automatic false", False, disabled["automatic"])
        t.check(disabled["next-at"] == rotated["next-at"], "disable-key-rotation: next-at unchanged",
                rotated["next-at"], disabled["next-at"])
        t.check(disabled["manual-count"] == 1, "disable-key-rotation: manual-count unchanged",
                1, disabled["manual-count"])
        t.check(self.seq(a, key_id) == seq + 1, "disable-key-rotation: revision.seq + 1", seq + 1, self.seq(a, key_id))
        a.refused("disable-kms-key-rotation", 409, "conflict", id=key_id)

        a.refused("enable-kms-key-rotation", 400, "bad-request", field="rotation-period",
                  mentions=(90, 2560), id=key_id, rotation_period=89)
        a.refused("enable-kms-key-rotation", 400, "bad-request", field="rotation-period",
                  mentions=(90, 2560), id=key_id, rotation_period=2561)

        now = time.time()
        enabled = a.ok("enable-kms-key-rotation", id=key_id)["rotation"]  # no body: 365 days
        t.check(enabled["automatic"] is True, "enable-key-rotation: automatic true", True, enabled["automatic"])
        t.check(enabled["rotation-period"] == 365, "enable-key-rotation: period defaults to 365",
                365, enabled["rotation-period"])
        t.close(enabled["next-at"], now + 365 * DAY, 60, "enable-key-rotation: next-at = now + 365 days")
        a.ok("disable-kms-key-rotation", id=key_id)
        longest = a.ok("enable-kms-key-rotation", id=key_id, rotation_period=2560)["rotation"]
        t.check(longest["rotation-period"] == 2560, "enable-key-rotation: period 2560 (the maximum)",
                2560, longest["rotation-period"])
        a.ok("disable-kms-key-rotation", id=key_id)
        now = time.time()
        enabled = a.ok("enable-kms-key-rotation", id=key_id, rotation_period=90)["rotation"]
        t.check(enabled["rotation-period"] == 90, "enable-key-rotation: period 90", 90, enabled["rotation-period"])
        t.close(enabled["next-at"], now + 90 * DAY, 60, "enable-key-rotation: next-at = now + 90 days")
        t.check(a.get(key_id)["rotation"] == enabled, "get: rotation as enable-key-rotation answered")
        count = len(a.ok("list-kms-key-rotations", id=key_id)["rotations"])
        t.check(count == 1, "rotation settings do not rotate", 1, count)

    def rotation_limit(self):
        t, a = self.t, self.a
        key_id = a.ok("create-kms-key", name=self.name("rotations"))["id"]
        self.keys["rotations"] = key_id
        ciphertexts = []
        for n in range(1, 11):
            ciphertexts.append(a.ok("encrypt", id=key_id, plaintext=b64(b"v%d" % n))["ciphertext"])
            rotation = a.ok("rotate-kms-key", id=key_id)["rotation"]
            t.check(rotation["manual-count"] == n, f"rotate #{n}: manual-count {n}", n, rotation["manual-count"])
        a.refused("rotate-kms-key", 400, "manual-rotation-limit", id=key_id)
        rotations = a.ok("list-kms-key-rotations", id=key_id)["rotations"]
        versions = [r["version"] for r in rotations]
        t.check(versions == list(range(2, 12)), "list-key-rotations: versions 2 to 11, oldest first",
                list(range(2, 12)), versions)
        stamps = [parse_ts(r["rotated-at"]) for r in rotations]
        t.check(stamps == sorted(stamps), "list-key-rotations: rotated-at in order", "ascending", stamps)
        t.check(a.get(key_id)["material"]["version"] == 11, "after 10 rotations: material version 11")
        for n, ciphertext in enumerate(ciphertexts, start=1):
            got = a.ok("decrypt", id=key_id, ciphertext=ciphertext)
            t.check(unb64(got["plaintext"]) == b"v%d" % n, f"version {n} still decrypts after 10 rotations")
        self.remember([a], key_id, ciphertexts[0], None, b"v1")

    # -- re-encrypt ----------------------------------------------------------------------------

    def re_encrypt(self):
        t, a = self.t, self.a
        key_a, key_b = self.keys["a"], self.keys["b"]
        plaintext = os.urandom(48)
        ctx_a, ctx_b = b"context-a", b"context-b"
        ciphertext = a.ok("encrypt", id=key_a, plaintext=b64(plaintext), encryption_context=b64(ctx_a))["ciphertext"]
        moved = a.ok("re-encrypt", id=key_a,
                     source={"key": key_a, "ciphertext": ciphertext, "encryption-context": b64(ctx_a)},
                     destination={"key": key_b, "encryption-context": b64(ctx_b)})["ciphertext"]
        got = a.ok("decrypt", id=key_b, ciphertext=moved, encryption_context=b64(ctx_b))
        t.check(unb64(got["plaintext"]) == plaintext,
                "re-encrypt: the new ciphertext decrypts with the destination key")
        self.remember([a], key_b, moved, ctx_b, plaintext)
        a.refused("decrypt", 400, "incorrect-key", id=key_a, ciphertext=moved, encryption_context=b64(ctx_b))
        a.refused("decrypt", 400, "incorrect-key", id=key_b, ciphertext=ciphertext, encryption_context=b64(ctx_a))
        a.refused("decrypt", 400, "invalid-ciphertext", id=key_b, ciphertext=moved, encryption_context=b64(ctx_a))
        a.refused("re-encrypt", 400, "invalid-ciphertext", id=key_a,
                  source={"key": key_a, "ciphertext": ciphertext, "encryption-context": b64(b"wrong")},
                  destination={"key": key_b})
        a.refused("re-encrypt", 400, "incorrect-key", id=key_b,
                  source={"key": key_b, "ciphertext": ciphertext, "encryption-context": b64(ctx_a)},
                  destination={"key": key_a})
        # Into the newest material of the same key, without a context.
        same = a.ok("re-encrypt", id=key_a,
                    source={"key": key_a, "ciphertext": ciphertext, "encryption-context": b64(ctx_a)},
                    destination={"key": key_a})["ciphertext"]
        got = a.ok("decrypt", id=key_a, ciphertext=same)
        t.check(unb64(got["plaintext"]) == plaintext, "re-encrypt into the same key")
        a.refused("re-encrypt", 404, "key-not-found", id=key_a,
                  source={"key": key_a, "ciphertext": ciphertext, "encryption-context": b64(ctx_a)},
                  destination={"key": str(uuid.uuid4())})
        a.refused("re-encrypt", 400, "bad-request", field="destination.key", id=key_a,
                  source={"key": key_a, "ciphertext": ciphertext, "encryption-context": b64(ctx_a)},
                  destination={"key": "not-a-uuid"})
        a.refused("re-encrypt", 400, "bad-request", field="source.ciphertext", id=key_a,
                  source={"key": key_a, "ciphertext": "!!"}, destination={"key": key_b})
        a.refused("re-encrypt", 400, "bad-request", field="destination", id=key_a,
                  source={"key": key_a, "ciphertext": ciphertext})

    # -- enable, disable -----------------------------------------------------------------------

    def enable_disable(self):
        t, a = self.t, self.a
        key_a, key_b = self.keys["a"], self.keys["b"]
        before = a.get(key_a)
        ciphertext, context, plaintext = self.made["version 1 ciphertext"]
        answer = a.ok("disable-kms-key", id=key_a)
        t.check(answer["status"] == "success", "disable an enabled key: success", "success", answer["status"])
        after = a.get(key_a)
        t.check(after["status"] == "disabled", "disable: status disabled", "disabled", after["status"])
        t.check(after["revision"]["seq"] == before["revision"]["seq"] + 1, "disable: revision.seq + 1",
                before["revision"]["seq"] + 1, after["revision"]["seq"])
        t.check(parse_ts(after["status-since"]) >= parse_ts(before["status-since"])
                and abs(parse_ts(after["status-since"]) - time.time()) < 60,
                "disable: status-since is the time of the change", "now", after["status-since"])
        answer = a.ok("disable-kms-key", id=key_a)
        t.check(answer["status"] == "already-applied", "disable a disabled key: already-applied",
                "already-applied", answer["status"])
        t.check(a.get(key_a)["revision"] == after["revision"], "already-applied leaves revision as it is")

        a.refused("encrypt", 400, "key-disabled", id=key_a, plaintext=b64(b"x"))
        a.refused("decrypt", 400, "key-disabled", id=key_a, ciphertext=ciphertext, encryption_context=b64(context))
        a.refused("generate-data-key", 400, "key-disabled", id=key_a)
        a.refused("re-encrypt", 400, "key-disabled", id=key_a,
                  source={"key": key_a, "ciphertext": ciphertext, "encryption-context": b64(context)},
                  destination={"key": key_b})
        b_ciphertext = a.ok("encrypt", id=key_b, plaintext=b64(b"to a disabled key"))["ciphertext"]
        a.refused("re-encrypt", 400, "key-disabled", id=key_b,
                  source={"key": key_b, "ciphertext": b_ciphertext}, destination={"key": key_a})
        a.refused("rotate-kms-key", 400, "key-disabled", id=key_a)
        a.refused("enable-kms-key-rotation", 400, "key-disabled", id=key_a)
        a.refused("disable-kms-key-rotation", 400, "key-disabled", id=key_a)
        a.ok("list-kms-key-rotations", id=key_a)
        t.check(a.get(key_a)["revision"] == after["revision"], "refusals leave revision as it is")

        answer = a.ok("enable-kms-key", id=key_a)
        t.check(answer["status"] == "success", "enable a disabled key: success", "success", answer["status"])
        t.check(a.get(key_a)["status"] == "enabled", "enable: status enabled")
        got = a.ok("decrypt", id=key_a, ciphertext=ciphertext, encryption_context=b64(context))
        t.check(unb64(got["plaintext"]) == plaintext, "enabled again: decrypts")

    # -- deletion ------------------------------------------------------------------------------

    def deletion(self):
        t, a = self.t, self.a
        key_id = a.ok("create-kms-key", name=self.name("deleted"))["id"]
        self.keys["deleted"] = key_id
        plaintext = b"kept through a cancelled deletion"
        ciphertext = a.ok("encrypt", id=key_id, plaintext=b64(plaintext))["ciphertext"]
        other = self.keys["b"]

        a.refused("schedule-kms-key-deletion", 400, "bad-request", field="delay-days", mentions=(7, 30),
                  id=key_id, delay_days=6)
        a.refused("schedule-kms-key-deletion", 400, "bad-request", field="delay-days", mentions=(7, 30),
                  id=key_id, delay_days=31)
        a.refused("cancel-kms-key-deletion", 400, "not-pending-deletion", id=key_id)

        seq = self.seq(a, key_id)
        now = time.time()
        scheduled = a.ok("schedule-kms-key-deletion", id=key_id, delay_days=7)
        delete_at = scheduled.get("delete-at")
        t.check(delete_at is not None, "schedule-deletion answers delete-at", "a date-time", delete_at)
        t.close(delete_at, now + 7 * DAY, 60, "schedule-deletion: delete-at = now + 7 days")
        got = a.get(key_id)
        t.check(got["status"] == "pending-deletion", "schedule-deletion: status pending-deletion",
                "pending-deletion", got["status"])
        t.check(got.get("delete-at") is not None and parse_ts(got["delete-at"]) == parse_ts(delete_at),
                "get: delete-at as schedule-deletion answered", delete_at, got.get("delete-at"))
        t.check(got["revision"]["seq"] == seq + 1, "schedule-deletion: revision.seq + 1",
                seq + 1, got["revision"]["seq"])
        entry = [e for e in a.ok("list-kms-keys")["kms-keys"] if e["id"] == key_id]
        t.check(len(entry) == 1 and entry[0]["status"] == "pending-deletion" and entry[0].get("delete-at") is not None,
                "list-kms-keys shows the pending deletion", "pending-deletion with delete-at", entry)

        a.refused("schedule-kms-key-deletion", 400, "key-pending-deletion", id=key_id, delay_days=8)
        a.refused("encrypt", 400, "key-pending-deletion", id=key_id, plaintext=b64(b"x"))
        a.refused("decrypt", 400, "key-pending-deletion", id=key_id, ciphertext=ciphertext)
        a.refused("generate-data-key", 400, "key-pending-deletion", id=key_id, bytes_count=16)
        a.refused("re-encrypt", 400, "key-pending-deletion", id=key_id,
                  source={"key": key_id, "ciphertext": ciphertext}, destination={"key": other})
        a.refused("enable-kms-key", 400, "key-pending-deletion", id=key_id)
        a.refused("disable-kms-key", 400, "key-pending-deletion", id=key_id)
        a.refused("rotate-kms-key", 400, "key-pending-deletion", id=key_id)
        a.refused("enable-kms-key-rotation", 400, "key-pending-deletion", id=key_id)
        a.refused("disable-kms-key-rotation", 400, "key-pending-deletion", id=key_id)
        a.ok("list-kms-key-rotations", id=key_id)
        t.check(self.seq(a, key_id) == seq + 1, "refusals while pending deletion change nothing")

        answer = a.ok("cancel-kms-key-deletion", id=key_id)
        t.check(answer["status"] == "success", "cancel-deletion: success", "success", answer["status"])
        got = a.get(key_id)
        t.check(got["status"] == "disabled", "cancel-deletion: the key is disabled", "disabled", got["status"])
        t.check("delete-at" not in got, "cancel-deletion: no delete-at any more", "absent", got.get("delete-at"))
        a.refused("cancel-kms-key-deletion", 400, "not-pending-deletion", id=key_id)
        a.ok("enable-kms-key", id=key_id)
        back = a.ok("decrypt", id=key_id, ciphertext=ciphertext)
        t.check(unb64(back["plaintext"]) == plaintext, "after a cancelled deletion: decrypts")

        # The default delay is 30 days (no body: Exoscale's client sends none).
        now = time.time()
        scheduled = a.ok("schedule-kms-key-deletion", id=key_id)
        t.close(scheduled.get("delete-at"), now + 30 * DAY, 60, "schedule-deletion: delay defaults to 30 days")
        a.ok("cancel-kms-key-deletion", id=key_id)
        a.ok("enable-kms-key", id=key_id)

        # A key left pending deletion across the restart.
        pending = a.ok("create-kms-key", name=self.name("pending"))["id"]
        self.keys["pending"] = pending
        plaintext = b"pending across a restart"
        ciphertext = a.ok("encrypt", id=pending, plaintext=b64(plaintext))["ciphertext"]
        scheduled = a.ok("schedule-kms-key-deletion", id=pending, delay_days=30)
        self.made["pending"] = {"ciphertext": ciphertext, "plaintext": b64(plaintext),
                                "delete-at": scheduled["delete-at"]}

    # -- ids -----------------------------------------------------------------------------------

    def ids(self):
        a = self.a
        unknown = str(uuid.uuid4())
        a.refused("get-kms-key", 400, "bad-request", id="not-a-uuid")
        a.refused("encrypt", 400, "bad-request", id="1234", plaintext=b64(b"x"))
        a.refused("rotate-kms-key", 400, "bad-request", id="kms-key-a")
        for operation, kwargs in (
            ("get-kms-key", {}),
            ("list-kms-key-rotations", {}),
            ("enable-kms-key", {}),
            ("disable-kms-key", {}),
            ("rotate-kms-key", {}),
            ("enable-kms-key-rotation", {}),
            ("disable-kms-key-rotation", {}),
            ("schedule-kms-key-deletion", {"delay_days": 7}),
            ("cancel-kms-key-deletion", {}),
            ("replicate-kms-key", {"zone": self.b.name}),
            ("encrypt", {"plaintext": b64(b"x")}),
            ("decrypt", {"ciphertext": b64(b"x" * 64)}),
            ("generate-data-key", {}),
        ):
            a.refused(operation, 404, "key-not-found", id=unknown, **kwargs)
        a.refused("re-encrypt", 404, "key-not-found", id=unknown,
                  source={"key": unknown, "ciphertext": b64(b"x" * 64)}, destination={"key": self.keys["a"]})

    # -- replication ---------------------------------------------------------------------------

    def replication(self):
        t, a, b = self.t, self.a, self.b
        key_id = a.ok("create-kms-key", name=self.name("multi"), multi_zone=True)["id"]
        self.keys["multi"] = key_id
        origin = a.get(key_id)
        t.check(origin["multi-zone"] is True, "create multi-zone: multi-zone true", True, origin["multi-zone"])
        plaintext = b"made in the origin zone"
        early = a.ok("encrypt", id=key_id, plaintext=b64(plaintext))["ciphertext"]

        a.refused("replicate-kms-key", 400, "not-multi-zone", id=self.keys["a"], zone=b.name)
        a.refused("replicate-kms-key", 400, "invalid-argument", id=key_id, zone=a.name)
        a.refused("replicate-kms-key", 400, "invalid-argument", id=key_id, zone="zz-nowhere-9")
        a.refused("replicate-kms-key", 400, "bad-request", field="zone", id=key_id)
        b.refused("get-kms-key", 404, "key-not-found", id=key_id)

        answer = a.ok("replicate-kms-key", id=key_id, zone=b.name)
        t.check(answer["status"] == "target-registered", "replicate: target-registered",
                "target-registered", answer["status"])
        a.refused("replicate-kms-key", 409, "conflict", id=key_id, zone=b.name)

        replica = self.poll("the replica appears in the target zone",
                            lambda: b.ok("get-kms-key", id=key_id) if self._exists(b, key_id) else None)
        origin = self.converged(key_id)
        replica = b.get(key_id)
        t.check(origin.get("replicas") == [b.name], "origin: replicas lists the target zone",
                [b.name], origin.get("replicas"))
        states = origin.get("replicas-status") or []
        t.check([s["zone"] for s in states] == [b.name], "origin: replicas-status has the target zone",
                [b.name], states)
        for field in ("id", "name", "description", "usage", "source", "multi-zone", "origin-zone",
                      "created-at", "material", "rotation"):
            t.check(replica.get(field) == origin.get(field), f"replica: {field} as the origin's",
                    origin.get(field), replica.get(field))
        t.check(replica["origin-zone"] == a.name, "replica: origin-zone is the origin", a.name, replica["origin-zone"])
        t.check(replica["status"] == "enabled", "replica: enabled", "enabled", replica["status"])
        t.check(any(e["id"] == key_id for e in b.ok("list-kms-keys")["kms-keys"]),
                "replica zone: list-kms-keys lists the replica")

        # A ciphertext of one zone decrypts in the other, both ways.
        got = b.ok("decrypt", id=key_id, ciphertext=early)
        t.check(unb64(got["plaintext"]) == plaintext, "a ciphertext of the origin zone decrypts in the replica zone")
        self.remember([a, b], key_id, early, None, plaintext)
        there = b.ok("encrypt", id=key_id, plaintext=b64(b"made in the replica zone"),
                     encryption_context=b64(b"ctx"))["ciphertext"]
        got = a.ok("decrypt", id=key_id, ciphertext=there, encryption_context=b64(b"ctx"))
        t.check(unb64(got["plaintext"]) == b"made in the replica zone",
                "a ciphertext of the replica zone decrypts in the origin zone")
        self.remember([a, b], key_id, there, b"ctx", b"made in the replica zone")
        data_key = b.ok("generate-data-key", id=key_id, bytes_count=16)
        got = a.ok("decrypt", id=key_id, ciphertext=data_key["ciphertext"])
        t.check(unb64(got["plaintext"]) == unb64(data_key["plaintext"]),
                "a data key of the replica zone decrypts in the origin zone")

        # What a replica refuses.
        b.refused("replicate-kms-key", 400, "not-on-replica", id=key_id, zone=a.name)
        b.refused("rotate-kms-key", 400, "not-on-replica", id=key_id)
        b.refused("disable-kms-key-rotation", 400, "not-on-replica", id=key_id)
        b.refused("enable-kms-key-rotation", 400, "not-on-replica", id=key_id, rotation_period=100)
        b.refused("schedule-kms-key-deletion", 400, "not-on-replica", id=key_id, delay_days=7)
        b.refused("cancel-kms-key-deletion", 400, "not-on-replica", id=key_id)
        b.refused("create-kms-key", 409, "name-conflict", name=self.name("multi"))

        # A replica's status is its own.
        answer = b.ok("enable-kms-key", id=key_id)
        t.check(answer["status"] == "already-applied", "replica: enable when enabled: already-applied",
                "already-applied", answer["status"])
        answer = b.ok("disable-kms-key", id=key_id)
        t.check(answer["status"] == "success", "replica: disable: success", "success", answer["status"])
        t.check(b.get(key_id)["status"] == "disabled", "replica: disabled in the replica zone")
        t.check(a.get(key_id)["status"] == "enabled", "replica: the origin stays enabled")
        b.refused("encrypt", 400, "key-disabled", id=key_id, plaintext=b64(b"x"))
        a.ok("encrypt", id=key_id, plaintext=b64(b"x"))
        b.ok("enable-kms-key", id=key_id)

        # Rotations and rotation settings follow the origin.
        a.ok("rotate-kms-key", id=key_id)
        a.ok("disable-kms-key-rotation", id=key_id)
        origin = self.converged(key_id)
        replica = self.poll("the replica follows the origin's rotation and settings",
                            lambda: (lambda r: r if r["material"] == origin["material"]
                                     and r["rotation"] == origin["rotation"] else None)(b.get(key_id)))
        t.check(replica["material"]["version"] == 2, "replica: material version 2 after the origin's rotation",
                2, replica["material"]["version"])
        t.check(replica["rotation"]["automatic"] is False and replica["rotation"]["manual-count"] == 1,
                "replica: rotation settings follow the origin", origin["rotation"], replica["rotation"])
        later = a.ok("encrypt", id=key_id, plaintext=b64(b"version 2"))["ciphertext"]
        got = b.ok("decrypt", id=key_id, ciphertext=later)
        t.check(unb64(got["plaintext"]) == b"version 2", "a version 2 ciphertext decrypts in the replica zone")
        self.remember([a, b], key_id, later, None, b"version 2")

        # Replication is refused while disabled or pending deletion.
        other = a.ok("create-kms-key", name=self.name("multi-2"), multi_zone=True)["id"]
        self.keys["multi-2"] = other
        a.ok("disable-kms-key", id=other)
        a.refused("replicate-kms-key", 400, "key-disabled", id=other, zone=b.name)
        a.ok("enable-kms-key", id=other)
        a.ok("schedule-kms-key-deletion", id=other, delay_days=7)
        a.refused("replicate-kms-key", 400, "key-pending-deletion", id=other, zone=b.name)
        a.ok("cancel-kms-key-deletion", id=other)
        b.refused("get-kms-key", 404, "key-not-found", id=other)

        # Scheduled deletion and its cancellation follow the origin; the status is then the
        # replica's own again.
        a.ok("enable-kms-key", id=other)
        plaintext = b"multi-zone key 2"
        ciphertext = a.ok("encrypt", id=other, plaintext=b64(plaintext))["ciphertext"]
        a.ok("replicate-kms-key", id=other, zone=b.name)
        self.poll("the second replica appears", lambda: self._exists(b, other))
        self.converged(other)
        replica = self.schedule_and_cancel_followed(
            other, ciphertext, ("enable-kms-key", 400, "key-pending-deletion"))
        t.check("delete-at" not in replica, "replica: no delete-at after the cancellation", "absent",
                replica.get("delete-at"))
        t.check(a.get(other)["status"] == "disabled", "origin: disabled after the cancellation")
        answer = b.ok("enable-kms-key", id=other)
        t.check(answer["status"] == "success", "replica: enable after the cancellation: success",
                "success", answer["status"])
        got = b.ok("decrypt", id=other, ciphertext=ciphertext)
        t.check(unb64(got["plaintext"]) == plaintext, "replica enabled, origin disabled: the replica decrypts")
        a.refused("decrypt", 400, "key-disabled", id=other, ciphertext=ciphertext)
        self.remember([b], other, ciphertext, None, plaintext)

    # -- authentication ------------------------------------------------------------------------

    def authentication(self):
        t, v, a, b = self.t, self.v, self.a, self.b
        wrong = Zone(t, v, a.name, a.url, self.key, self.secret + "x")
        wrong.refused("list-kms-keys", 403, "forbidden")
        wrong.refused("get-kms-key", 403, "forbidden", id=self.keys["a"])
        stranger = Zone(t, v, a.name, a.url, "EXOnobody", self.secret)
        stranger.refused("encrypt", 403, "forbidden", id=self.keys["a"], plaintext=b64(b"x"))
        served = [a.name] if self.separate else [a.name, b.name]
        auth_checks(t, v, a.url, self.key, self.secret, self.keys["a"], served)

    # -- snapshot ------------------------------------------------------------------------------

    def snapshot(self):
        a, b = self.a, self.b
        self.converged(self.keys["multi"])
        self.converged(self.keys["multi-2"])
        state = {
            "zones": [a.name, b.name],
            "suffix": self.suffix,
            "keys": self.keys,
            "snapshot": {
                zone.name: {label: zone.get(key_id) for label, key_id in self.keys.items()
                            if self._exists(zone, key_id)}
                for zone in (a, b)
            },
            "ciphertexts": self.ciphertexts,
            "pending": self.made["pending"],
        }
        self.t.check(set(state["snapshot"][b.name]) == {"multi", "multi-2"},
                     "the replica zone holds only the replicas", ["multi", "multi-2"],
                     sorted(state["snapshot"][b.name]))
        Path(self.state_path).write_text(json.dumps(state, indent=1))


def auth_checks(t, v, url, key, secret, key_id, served):
    """The refusals Exoscale's client cannot produce, sent with `requests`, and the unsigned
    health check (which lists the zones `served` by the process at `url`)."""
    session = requests.Session()
    # Session.send does not read the environment as Exoscale's client (Session.request) does:
    # over HTTPS, trust the test CA that run.sh names in REQUESTS_CA_BUNDLE here too.
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or True
    target = f"{url}/kms-key/{key_id}"

    def send(expires=None, header=None, body=None, method="GET", address=target):
        request = requests.Request(method, address, data=body).prepare()
        if expires is not None:
            ExoscaleV2Auth(key, secret)._sign_request(request, expires)
        if header is not None:
            request.headers["Authorization"] = header
        return session.send(request, timeout=30)

    now = int(time.time())
    response = send(expires=now + 600)
    t.check(response.status_code == 200, "raw request signed with exoscale_auth: 200",
            200, f"{response.status_code} {response.text}", describe(response))
    response = send()
    check_problem(t, v, response, 401, "unauthorized", None, (), "no Authorization header")
    t.check("EXO2-HMAC-SHA256" in response.headers.get("WWW-Authenticate", ""),
            "401 names the scheme in WWW-Authenticate (RFC 9110)", "EXO2-HMAC-SHA256",
            response.headers.get("WWW-Authenticate"), describe(response))
    check_problem(t, v, send(header="EXO2-HMAC-SHA256 credential=" + key), 401, "unauthorized", None, (),
                  "malformed Authorization header")
    check_problem(t, v, send(header="Bearer token"), 401, "unauthorized", None, (),
                  "another authorization scheme")
    check_problem(t, v, send(expires=now - 120), 403, "forbidden", None, (), "expired signature")
    check_problem(t, v, send(expires=now + 2 * 3600), 403, "forbidden", None, (),
                  "signature valid for more than an hour")
    # A signature over another body.
    request = requests.Request("POST", f"{url}/kms-key/{key_id}/encrypt",
                               data=json.dumps({"plaintext": b64(b"signed")}).encode()).prepare()
    ExoscaleV2Auth(key, secret)._sign_request(request, now + 600)
    request.body = json.dumps({"plaintext": b64(b"forged")}).encode()
    request.headers["Content-Length"] = str(len(request.body))
    check_problem(t, v, session.send(request, timeout=30), 403, "forbidden", None, (), "tampered body")
    # A path that names no operation.
    check_problem(t, v, send(expires=now + 600, address=f"{url}/kms-keys"), 404, "not-found", None, (),
                  "unknown path")
    check_problem(t, v, send(expires=now + 600, method="DELETE"), 405, "method-not-allowed", None, (),
                  "a method the path does not have")
    # The health check: unsigned, the zones of the process and nothing else (not the zones
    # it names as peers).
    health = send(address=url.rsplit("/v2", 1)[0] + "/keylife/v1/health")
    body = health.json() if health.headers.get("Content-Type") == "application/json" else None
    t.check(health.status_code == 200 and isinstance(body, dict) and body.get("status") == "ok"
            and sorted(body) == ["status", "zones"] and body.get("zones") == served,
            f"unsigned GET /keylife/v1/health: 200, status ok and the zones served {served}",
            {"status": "ok", "zones": served}, f"{health.status_code} {health.text}", describe(health))


# ---------------------------------------------------------------------------------------------
# Phase two: after a restart


class AfterRestart:
    def __init__(self, t, v, zones, key, secret, state_path, separate=False):
        self.t = t
        self.v = v
        self.zones = {z.name: z for z in zones}
        self.a, self.b = zones
        self.state = json.loads(Path(state_path).read_text())

    def sections(self):
        return [
            ("keys and state kept", self.kept),
            ("old ciphertexts decrypt", self.ciphertexts),
            ("pending deletion kept", self.pending),
            ("work goes on", self.goes_on),
        ]

    def kept(self):
        t = self.t
        for zone_name, keys in self.state["snapshot"].items():
            zone = self.zones[zone_name]
            listed = {e["id"] for e in zone.ok("list-kms-keys")["kms-keys"]}
            for label, before in keys.items():
                t.check(before["id"] in listed, f"{zone_name}: key {label} still listed", before["id"], sorted(listed))
                after = zone.get(before["id"])
                for field in sorted(set(before) | set(after)):
                    if field == "replicas-status":
                        continue
                    t.check(after.get(field) == before.get(field),
                            f"{zone_name}: key {label}: {field} as acknowledged before the restart",
                            before.get(field), after.get(field), f"GET {zone.url}/kms-key/{before['id']}")
                if "replicas-status" in before:
                    states = {s["zone"]: s["last-applied-watermark"] for s in after.get("replicas-status") or []}
                    expected = {s["zone"]: s["last-applied-watermark"] for s in before["replicas-status"]}
                    t.check(all(states.get(z, -1) >= w for z, w in expected.items()),
                            f"{zone_name}: key {label}: replicas-status watermarks kept", expected, states)

    def ciphertexts(self):
        t = self.t
        for item in self.state["ciphertexts"]:
            for zone_name in item["zones"]:
                kwargs = {"id": item["key"], "ciphertext": item["ciphertext"]}
                if item["context"] is not None:
                    kwargs["encryption_context"] = item["context"]
                got = self.zones[zone_name].ok("decrypt", **kwargs)
                t.check(got["plaintext"] == item["plaintext"],
                        f"{zone_name}: a ciphertext of before the restart decrypts",
                        item["plaintext"], got["plaintext"])

    def pending(self):
        t, a = self.t, self.a
        key_id = self.state["keys"]["pending"]
        pending = self.state["pending"]
        got = a.get(key_id)
        t.check(got["status"] == "pending-deletion", "the key pending deletion still is",
                "pending-deletion", got["status"])
        t.check(got.get("delete-at") == pending["delete-at"], "its delete-at is kept",
                pending["delete-at"], got.get("delete-at"))
        a.refused("decrypt", 400, "key-pending-deletion", id=key_id, ciphertext=pending["ciphertext"])
        a.ok("cancel-kms-key-deletion", id=key_id)
        t.check(a.get(key_id)["status"] == "disabled", "cancelled after the restart: disabled")
        a.ok("enable-kms-key", id=key_id)
        got = a.ok("decrypt", id=key_id, ciphertext=pending["ciphertext"])
        t.check(got["plaintext"] == pending["plaintext"], "its ciphertext decrypts once enabled again")

    def goes_on(self):
        t, a, b = self.t, self.a, self.b
        keys = self.state["keys"]
        suffix = self.state["suffix"]
        a.refused("create-kms-key", 409, "name-conflict", name=f"conformance-a-{suffix}")
        b.refused("create-kms-key", 409, "name-conflict", name=f"conformance-multi-{suffix}")
        fresh = a.ok("create-kms-key", name=f"conformance-after-restart-{suffix}")["id"]
        ciphertext = a.ok("encrypt", id=fresh, plaintext=b64(b"new"))["ciphertext"]
        t.check(unb64(a.ok("decrypt", id=fresh, ciphertext=ciphertext)["plaintext"]) == b"new",
                "a key created after the restart works")
        # Replication goes on: a rotation of the origin reaches the replica.
        multi = keys["multi"]
        a.ok("rotate-kms-key", id=multi)
        version = a.get(multi)["material"]["version"]
        deadline = time.time() + REPLICATION_TIMEOUT
        while time.time() < deadline and b.get(multi)["material"]["version"] != version:
            time.sleep(0.1)
        t.check(b.get(multi)["material"]["version"] == version,
                "after the restart, the origin's rotation reaches the replica", version,
                b.get(multi)["material"]["version"])
        ciphertext = a.ok("encrypt", id=multi, plaintext=b64(b"after restart"))["ciphertext"]
        t.check(unb64(b.ok("decrypt", id=multi, ciphertext=ciphertext)["plaintext"]) == b"after restart",
                "after the restart, a new origin ciphertext decrypts in the replica zone")


# ---------------------------------------------------------------------------------------------
# Zones in separate processes: the replica zone's process crashes and comes back


# How long a replica may take to converge once its process is back: the origin retries a
# failed delivery after 1 s, doubling (at most 5 minutes), so an outage of a few seconds is
# made up within a few more.
CONVERGENCE_TIMEOUT = 60.0


class TargetDown(Following):
    """Run while the replica zone's process is killed: the origin answers every change and
    records the failed deliveries. Adds what it made to the state file, for `target-back`."""

    def __init__(self, t, v, zones, key, secret, state_path, separate=False):
        self.t = t
        self.v = v
        self.a, self.b = zones
        self.state_path = state_path
        self.state = json.loads(Path(state_path).read_text())
        self.made = Needs()

    def sections(self):
        return [
            ("changes while the replica zone is down", self.changes),
            ("the origin records the failed deliveries", self.failures),
            ("state for target-back", self.save),
        ]

    def changes(self):
        t, a, b = self.t, self.a, self.b
        keys = self.state["keys"]
        suffix = self.state["suffix"]
        # A new multi-zone key, replicated to the zone that cannot be reached.
        fresh = a.ok("create-kms-key", name=f"conformance-while-down-{suffix}", multi_zone=True)["id"]
        self.made["fresh"] = fresh
        plaintext = b"made while the replica zone was down"
        ciphertext = a.ok("encrypt", id=fresh, plaintext=b64(plaintext))["ciphertext"]
        answer = a.ok("replicate-kms-key", id=fresh, zone=b.name)
        t.check(answer["status"] == "target-registered",
                "replicate to a zone whose process is down: target-registered",
                "target-registered", answer["status"])
        t.check(a.get(fresh).get("replicas") == [b.name], "origin: the new key lists the replica zone",
                [b.name], a.get(fresh).get("replicas"))
        made = [{"key": fresh, "ciphertext": ciphertext, "plaintext": b64(plaintext)}]

        # An existing replica's origin: a new version and new rotation settings.
        multi = keys["multi"]
        before = a.get(multi)
        a.ok("rotate-kms-key", id=multi)
        a.ok("enable-kms-key-rotation", id=multi, rotation_period=90)
        after = a.get(multi)
        t.check(after["material"]["version"] == before["material"]["version"] + 1,
                "origin: rotate while the replica zone is down: a new version",
                before["material"]["version"] + 1, after["material"]["version"])
        plaintext = b"version made while the replica zone was down"
        ciphertext = a.ok("encrypt", id=multi, plaintext=b64(plaintext))["ciphertext"]
        made.append({"key": multi, "ciphertext": ciphertext, "plaintext": b64(plaintext)})

        # A deletion scheduled and cancelled that the replica never sees: it must end disabled
        # (design.md, "State, not events": `last_cancel_seq`).
        other = keys["multi-2"]
        a.ok("schedule-kms-key-deletion", id=other, delay_days=7)
        a.ok("cancel-kms-key-deletion", id=other)
        t.check(a.get(other)["status"] == "disabled", "origin: disabled after the cancellation",
                "disabled", a.get(other)["status"])
        self.made["ciphertexts"] = made

    def failures(self):
        t, a, b = self.t, self.a, self.b
        keys = self.state["keys"]
        for key_id in (self.made["fresh"], keys["multi"], keys["multi-2"]):
            def probe():
                got = a.get(key_id)
                states = {s["zone"]: s for s in got.get("replicas-status") or []}
                failure = (states.get(b.name) or {}).get("last-failure")
                return (got, states[b.name]) if failure else None

            got, state = self.poll(f"origin: replicas-status of {key_id} shows the failed delivery", probe)
            failure = state["last-failure"]
            t.check(str(failure.get("error", "")).startswith(f"zone {b.name} is unreachable:"),
                    "last-failure.error: the replica zone is unreachable",
                    f"zone {b.name} is unreachable: ...", failure.get("error"))
            # A change made while a retry is not yet due waits for it: the revision attempted
            # may be older than the latest, but is newer than the one applied.
            attempted = failure.get("attempted-watermark")
            applied = state.get("last-applied-watermark", -1)
            t.check(isinstance(attempted, int) and applied < attempted <= got["revision"]["seq"],
                    "last-failure.attempted-watermark: a revision the replica has not applied",
                    f"in ({applied}, {got['revision']['seq']}]", attempted)
            t.close(failure.get("failed-at"), time.time(), 60, "last-failure.failed-at: just now")
            t.check(state.get("last-applied-watermark", -1) < got["revision"]["seq"],
                    "replicas-status: the origin's latest revision is not applied",
                    f"< {got['revision']['seq']}", state.get("last-applied-watermark"))

    def save(self):
        self.state["outage"] = {"fresh": self.made["fresh"], "ciphertexts": self.made["ciphertexts"]}
        Path(self.state_path).write_text(json.dumps(self.state, indent=1))


class TargetBack(Following):
    """Run once the replica zone's process is started again after `target-down`."""

    def __init__(self, t, v, zones, key, secret, state_path, separate=False):
        self.t = t
        self.v = v
        self.a, self.b = zones
        self.zones = {z.name: z for z in zones}
        self.state = json.loads(Path(state_path).read_text())

    def sections(self):
        return [
            ("the replicas converge", self.converge),
            ("the replicas follow their origins", self.follow),
            ("ciphertexts decrypt in both zones", self.crypto),
            ("deletion scheduled and cancelled across processes", self.deletion),
        ]

    def converge(self):
        keys, outage = self.state["keys"], self.state["outage"]
        for key_id in (outage["fresh"], keys["multi"], keys["multi-2"]):
            origin = self.converged(key_id, CONVERGENCE_TIMEOUT)
            state = {s["zone"]: s for s in origin["replicas-status"]}[self.b.name]
            self.t.check("last-failure" not in state or state["last-failure"] is None,
                         "replicas-status: the last failure is cleared by the delivery", None,
                         state.get("last-failure"))

    def follow(self):
        t, a, b = self.t, self.a, self.b
        keys, outage = self.state["keys"], self.state["outage"]
        fresh = outage["fresh"]
        origin, replica = a.get(fresh), b.get(fresh)
        for field in ("id", "name", "usage", "source", "multi-zone", "origin-zone", "created-at",
                      "material", "rotation", "replicas"):
            t.check(replica.get(field) == origin.get(field),
                    f"the replica made after the outage: {field} as the origin's",
                    origin.get(field), replica.get(field))
        t.check(replica["origin-zone"] == a.name, "the new replica's origin-zone is the origin zone",
                a.name, replica["origin-zone"])
        t.check(replica["status"] == "enabled", "the new replica is enabled", "enabled", replica["status"])
        t.check(any(e["id"] == fresh for e in b.ok("list-kms-keys")["kms-keys"]),
                "the replica zone lists the new replica")
        b.refused("rotate-kms-key", 400, "not-on-replica", id=fresh)

        origin, replica = a.get(keys["multi"]), b.get(keys["multi"])
        t.check(replica["material"] == origin["material"],
                "the replica holds the version made while it was down", origin["material"], replica["material"])
        t.check(replica["rotation"] == origin["rotation"] and replica["rotation"]["rotation-period"] == 90,
                "the replica follows the rotation settings changed while it was down",
                origin["rotation"], replica["rotation"])
        rotations = [r["version"] for r in b.ok("list-kms-key-rotations", id=keys["multi"])["rotations"]]
        expected = [r["version"] for r in a.ok("list-kms-key-rotations", id=keys["multi"])["rotations"]]
        t.check(rotations == expected, "list-kms-key-rotations: the replica's versions are the origin's",
                expected, rotations)

        replica = b.get(keys["multi-2"])
        t.check(replica["status"] == "disabled",
                "a deletion scheduled and cancelled while the replica was down leaves it disabled",
                "disabled", replica["status"])
        t.check("delete-at" not in replica, "and without delete-at", "absent", replica.get("delete-at"))

    def crypto(self):
        t, a, b = self.t, self.a, self.b
        outage = self.state["outage"]
        for item in outage["ciphertexts"]:
            got = b.ok("decrypt", id=item["key"], ciphertext=item["ciphertext"])
            t.check(got["plaintext"] == item["plaintext"],
                    "a ciphertext the origin made while the replica was down decrypts in the replica zone",
                    item["plaintext"], got["plaintext"])
        # Every ciphertext the earlier phases made under a replicated key, in both zones.
        for item in self.state["ciphertexts"]:
            if len(item["zones"]) < 2:
                continue
            for zone in (a, b):
                kwargs = {"id": item["key"], "ciphertext": item["ciphertext"]}
                if item["context"] is not None:
                    kwargs["encryption_context"] = item["context"]
                got = zone.ok("decrypt", **kwargs)
                t.check(got["plaintext"] == item["plaintext"],
                        f"{zone.name}: a ciphertext of before the outage decrypts",
                        item["plaintext"], got["plaintext"])
        # Both ways, under the new replica.
        fresh = outage["fresh"]
        for source, target in ((a, b), (b, a)):
            plaintext = f"made in {source.name}".encode()
            made = source.ok("encrypt", id=fresh, plaintext=b64(plaintext), encryption_context=b64(b"outage"))
            got = target.ok("decrypt", id=fresh, ciphertext=made["ciphertext"], encryption_context=b64(b"outage"))
            t.check(unb64(got["plaintext"]) == plaintext,
                    f"a ciphertext made in {source.name} decrypts in {target.name}")
            data_key = source.ok("generate-data-key", id=fresh, bytes_count=32)
            got = target.ok("decrypt", id=fresh, ciphertext=data_key["ciphertext"])
            t.check(got["plaintext"] == data_key["plaintext"],
                    f"a data key made in {source.name} decrypts in {target.name}")

    def deletion(self):
        t, a, b = self.t, self.a, self.b
        fresh = self.state["outage"]["fresh"]
        ciphertext = a.ok("encrypt", id=fresh, plaintext=b64(b"pending"))["ciphertext"]
        self.schedule_and_cancel_followed(
            fresh, ciphertext, ("cancel-kms-key-deletion", 400, "not-on-replica"))
        self.converged(fresh)
        for zone in (a, b):
            zone.ok("enable-kms-key", id=fresh)
            got = zone.ok("decrypt", id=fresh, ciphertext=ciphertext)
            t.check(unb64(got["plaintext"]) == b"pending", f"{zone.name}: decrypts once enabled again")


# ---------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=["first", "after-restart", "target-down", "target-back"],
                        required=True)
    parser.add_argument("--separate-processes", action="store_true",
                        help="each zone is served by its own process (needed by target-down and target-back)")
    parser.add_argument("--credentials-file", required=True, help="the server's: `KEY SECRET` on its first line")
    parser.add_argument("--state", required=True, help="JSON file written by `first`, read by `after-restart`")
    parser.add_argument("--spec", help="OpenAPI spec (default: the one in the exoscale package)")
    parser.add_argument("--summary-file", help="write the number of checks passed here")
    parser.add_argument("zones", nargs=2, metavar="ZONE=URL", help="the two zones, origin first")
    args = parser.parse_args()

    key, secret = Path(args.credentials_file).read_text().split("\n", 1)[0].split()
    spec_path = Path(args.spec) if args.spec else Path(exoscale.__file__).parent / "openapi.json"
    spec = json.loads(spec_path.read_text())
    missing = [op for op in OPERATIONS if op not in {
        o.get("operationId") for item in spec["paths"].values() for o in item.values() if isinstance(o, dict)}]
    if missing:
        sys.exit(f"conformance: the spec {spec_path} lacks {missing}")

    checks = Checks()
    validator = SchemaValidator(spec)
    zones = []
    for text in args.zones:
        name, url = text.split("=", 1)
        zones.append(Zone(checks, validator, name, url.rstrip("/"), key, secret))

    if args.phase.startswith("target-") and not args.separate_processes:
        sys.exit(f"conformance: phase {args.phase} needs --separate-processes")
    phase_class = {"first": FirstPhase, "after-restart": AfterRestart,
                   "target-down": TargetDown, "target-back": TargetBack}[args.phase]
    phase = phase_class(checks, validator, zones, key, secret, args.state,
                        separate=args.separate_processes)
    started = time.time()
    for title, section in phase.sections():
        checks.section = title
        try:
            section()
        except Abort as stop:
            print(f"conformance: section {title!r} stopped: {stop}", flush=True)
        except Exception:  # a bug or an unexpected answer: report it and go on
            checks.check(False, "section ran without an unexpected error", "no exception", traceback.format_exc())
    elapsed = time.time() - started

    print(f"conformance [{args.phase}]: operations answered 2xx and validated:")
    for operation in OPERATIONS:
        print(f"  {operation:<27} {checks.exercised[operation]:>4} ok, {checks.refused[operation]:>4} refusals")
    if args.phase == "first":
        missing = [op for op in OPERATIONS if not checks.exercised[op]]
        checks.section = "coverage"
        checks.check(not missing, "all 16 operations exercised", "16", f"missing {missing}")
        print(f"conformance [{args.phase}]: {len(OPERATIONS) - len(missing)} of {len(OPERATIONS)} operations exercised")
    if validator.undocumented:
        print(f"conformance [{args.phase}]: note: properties the spec does not name: "
              + ", ".join(sorted(validator.undocumented)))
    if args.summary_file:
        Path(args.summary_file).write_text(f"{checks.passed} {len(checks.failures)}\n")
    if checks.failures:
        print(f"conformance [{args.phase}]: {len(checks.failures)} checks FAILED, {checks.passed} passed "
              f"({elapsed:.1f} s):")
        for failure in checks.failures:
            print("  - " + failure.replace("\n", "\n    "))
        return 1
    print(f"conformance [{args.phase}]: {checks.passed} checks passed ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
