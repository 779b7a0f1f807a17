"""The OpenAPI 3.1 document served at GET /openapi.json.

The submission schema is generated from node/validation.py's field table (the same parsers refuse
what the schema forbids), and the task schema sits beside the serializer; tests check that the
document lists every route the app serves.
"""

from __future__ import annotations

from typing import Any

from core.limits import Limits
from core.priority import Priority
from core.task import Status
from node.serialize import TASK_SCHEMA
from node.validation import EXCLUSIVE_FIELDS, TASK_FIELDS

Schema = dict[str, Any]

OPENAPI_VERSION = "3.1.0"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def submission_schema(limits: Limits, task_types: list[str]) -> Schema:
    properties: dict[str, Schema] = {}
    for spec in TASK_FIELDS:
        properties[spec.name] = {**spec.schema(limits, task_types), "description": spec.description}
    return {
        "type": "object",
        "required": [spec.name for spec in TASK_FIELDS if spec.required],
        "additionalProperties": False,
        "properties": properties,
        "not": {"required": list(EXCLUSIVE_FIELDS)},
    }


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Schema]:
    why = {
        400: "malformed JSON or a bad query parameter",
        404: "no such task",
        408: "the body did not arrive in time (the connection is closed)",
        409: "the task is not in a state that allows this",
        413: "the body, a payload or the batch is over its limit",
        415: "the body is not application/json, or not in a Content-Encoding the node decodes",
        421: "this node is not the leader: the body names the leader and its HTTP address",
        422: "a field is invalid (the error names it)",
        503: "the node is not accepting work or the store is unreachable (see Retry-After)",
    }
    return {str(s): _json(ref("Error"), why[s]) for s in statuses}


_TASK_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}


def build_openapi(limits: Limits, task_types: list[str]) -> Schema:
    types = sorted(task_types)
    submit_errors = {
        **_errors(400, 408, 413, 415, 422, 503),
        "409": _json(
            ref("Error"),
            "the idempotency key already stands for another task (code idempotency_conflict)",
        ),
        "503": _json(
            ref("Error"),
            "the queue is full (code queue_full: queued + pending tasks at queued_tasks_max), "
            "the node is not accepting work or the store is unreachable (see Retry-After)",
        ),
    }
    list_params = [
        {
            "name": "status",
            "in": "query",
            "schema": {"type": "string", "enum": [s.value for s in Status]},
        },
        {
            "name": "type",
            "in": "query",
            "schema": {"type": "string", "maxLength": limits.task_type_chars_max},
        },
        {
            "name": "priority",
            "in": "query",
            "schema": {"type": "string", "enum": [p.label for p in Priority]},
        },
        {
            "name": "cursor",
            "in": "query",
            "description": "next_cursor of the previous page",
            "schema": {"type": "string"},
        },
        {
            "name": "limit",
            "in": "query",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": limits.page_tasks_max,
                "default": 100,
            },
        },
    ]
    paths: dict[str, Schema] = {
        "/v1/tasks": {
            "post": {
                "operationId": "submitTask",
                "summary": "Submit a task; 201 once the store holds it",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("TaskSubmission")}},
                },
                "responses": {
                    "201": _json(ref("Task"), "created"),
                    "200": _json(ref("Task"), "the idempotency key matched: the first task"),
                    **submit_errors,
                },
            },
            "get": {
                "operationId": "listTasks",
                "summary": "List tasks in submission order, a page at a time",
                "parameters": list_params,
                "responses": {"200": _json(ref("TaskPage"), "a page"), **_errors(400, 503)},
            },
        },
        "/v1/tasks/batch": {
            "post": {
                "operationId": "submitBatch",
                "summary": "Submit up to batch_tasks_max tasks, all or none",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("BatchSubmission")}},
                },
                "responses": {
                    "201": _json(ref("TaskList"), "every task, in the order given"),
                    "200": _json(
                        ref("TaskList"),
                        "every item's idempotency key matched an earlier task: those tasks, "
                        "in the order given; nothing was created",
                    ),
                    **submit_errors,
                },
            }
        },
        "/v1/tasks/{id}": {
            "parameters": [_TASK_ID],
            "get": {
                "operationId": "getTask",
                "responses": {"200": _json(ref("Task"), "the task"), **_errors(404, 503)},
            },
            "delete": {
                "operationId": "cancelTask",
                "summary": "Cancel an unfinished task (repeating it answers 200 again)",
                "responses": {
                    "200": _json(ref("Task"), "cancelled"),
                    **_errors(404, 409, 503),
                },
            },
        },
        "/v1/tasks/{id}/retry": {
            "parameters": [_TASK_ID],
            "post": {
                "operationId": "retryTask",
                "summary": "Run a dead or cancelled task again",
                "responses": {
                    "200": _json(ref("Task"), "queued (or pending on dependencies)"),
                    **_errors(404, 409),
                    # The task joins the backlog again, so the submission limit holds for it.
                    "503": submit_errors["503"],
                },
            },
        },
        "/v1/queues": {
            "get": {
                "operationId": "queues",
                "responses": {"200": _json(ref("Queues"), "task counts"), **_errors(503)},
            }
        },
        "/v1/cluster": {
            "get": {
                "operationId": "cluster",
                "responses": {"200": _json(ref("Cluster"), "leader, term and members")},
            }
        },
        "/v1/cluster/members": {
            "post": {
                "operationId": "addMember",
                "summary": "Add a Raft member (send to the leader; others answer 421). Refused "
                "(409 membership_unsafe) if fewer members than a majority of the new "
                "configuration would be reachable: start the newcomer first",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["raft"],
                                "additionalProperties": False,
                                "properties": {"raft": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json({"type": "object"}, "the member is in the configuration"),
                    **_errors(400, 408, 409, 421, 422, 503),
                },
            }
        },
        "/v1/cluster/members/{raft}": {
            "delete": {
                "operationId": "removeMember",
                "summary": "Remove a Raft member (send to the leader; others answer 421). The "
                "leader asked to remove itself hands leadership over and answers 503 "
                "leader_handing_over: retry, and the new leader removes it",
                "parameters": [
                    {"name": "raft", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _json({"type": "object"}, "the member left the configuration"),
                    **_errors(409, 421, 422, 503),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "The process is alive",
                "responses": {"200": _json({"type": "object"}, "alive")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "ready",
                "summary": "Ready to take work: store reachable, leader known, dispatch alive",
                "responses": {
                    "200": _json(ref("Readiness"), "ready"),
                    "503": _json(ref("Readiness"), "not ready"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "responses": {"200": _json({"type": "object"}, "this document")},
            }
        },
    }
    count = {"type": "integer", "minimum": 0}
    schemas: dict[str, Schema] = {
        "TaskSubmission": submission_schema(limits, types),
        "BatchSubmission": {
            "type": "object",
            "required": ["tasks"],
            "additionalProperties": False,
            "properties": {
                "tasks": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": limits.batch_tasks_max,
                    "items": ref("TaskSubmission"),
                    "description": "Errors name the item: tasks[3].priority.",
                }
            },
        },
        "Task": TASK_SCHEMA,
        "TaskList": {
            "type": "object",
            "required": ["tasks"],
            "properties": {"tasks": {"type": "array", "items": ref("Task")}},
        },
        "TaskPage": {
            "type": "object",
            "required": ["tasks", "next_cursor"],
            "properties": {
                "tasks": {"type": "array", "items": ref("Task")},
                "next_cursor": {"type": ["string", "null"], "description": "null: last page"},
            },
        },
        "Queues": {
            "type": "object",
            "properties": {
                "queued": {
                    "type": "object",
                    "properties": {p.label: count for p in Priority},
                },
                **{s.value: count for s in Status if s is not Status.QUEUED},
            },
        },
        "Cluster": {
            "type": "object",
            "properties": {
                "leader": {"type": ["string", "null"]},
                "term": {"type": "integer"},
                "self": {"type": "string"},
                "members": {"type": "array", "items": {"type": "object"}},
                "configuration": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Raft addresses in the cluster configuration",
                },
                "reachable": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "the members of it this node heard from lately, itself "
                    "included (on the leader: what a membership change is checked against)",
                },
            },
        },
        "Readiness": {
            "type": "object",
            "required": ["ready", "checks"],
            "properties": {"ready": {"type": "boolean"}, "checks": {"type": "object"}},
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "field", "message"],
                    "properties": {
                        "code": {"type": "string"},
                        "field": {
                            "type": ["string", "null"],
                            "description": "the offending input, e.g. tasks[3].priority",
                        },
                        "message": {"type": "string"},
                        "allowed": {"type": "array", "items": {"type": "string"}},
                        "task_id": {
                            "type": "string",
                            "description": "idempotency_conflict: the stored task the key "
                            "stands for",
                        },
                        "conflicts_with": {
                            "type": "string",
                            "description": "idempotency_conflict: the earlier item of the "
                            "same batch given the key (tasks[0]); nothing was stored",
                        },
                    },
                },
                "task": ref("Task"),
            },
        },
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "dsched",
            "version": "1",
            "description": "A distributed scheduler of prioritized tasks. Limits: "
            f"payload {limits.payload_bytes_max} bytes, batch {limits.batch_tasks_max} tasks, "
            f"body {limits.request_bytes_max} bytes.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
