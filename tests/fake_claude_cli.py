"""A fake Claude Code CLI for the claude runner's unit tests, passed to the SDK as `cli_path`.

It speaks the CLI's side of the SDK's stream-json protocol over stdin/stdout: it answers the
`initialize` control request, takes a user message, answers with `system/init`, `assistant` and
`result` messages, answers `interrupt` control requests, and resumes sessions (`--resume=<id>`)
that it saved itself. Standard library only; run with the test's Python.

Driven by its environment (which reaches it only if the runner let it through):
- FAKE_CLAUDE_STATE: folder for its sessions (`<id>.json`) and `calls.jsonl`: a line per
  prompt (and per refused resume) with its argv, environment, pid, process group, cwd and
  the prompts it got.
- FAKE_CLAUDE_SCENARIO: "ok" (default); "stall" (after one assistant message, waits for an
  interrupt); "hang" (waits, ignores interrupts, end of input and SIGTERM); "crash" (exits 3
  after its init message); "api_error" (an error result with HTTP 529, then exit 1);
  "max_turns" and "budget" (error results of those subtypes, then exit 1); "bad_json"
  (a line that is not JSON).
- FAKE_CLAUDE_COST: the cost of one turn in USD (default 0.25); totals add up per session.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

VERSION = "2.1.332"
SCENARIO = os.environ.get("FAKE_CLAUDE_SCENARIO", "ok")
STATE = Path(os.environ.get("FAKE_CLAUDE_STATE", "."))
COST = float(os.environ.get("FAKE_CLAUDE_COST", "0.25"))


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def argument(name: str) -> str | None:
    for i, arg in enumerate(sys.argv):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
    return None


def result(session: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "duration_ms": 12,
        "duration_api_ms": 5,
        "num_turns": 1,
        "session_id": session["id"],
        "total_cost_usd": session["total"],
        "usage": {"input_tokens": 100, "output_tokens": 20},
        "terminal_reason": "completed",
        "stop_reason": "end_turn",
        **fields,
    }


def save(session: dict[str, Any]) -> None:
    (STATE / f"{session['id']}.json").write_text(json.dumps(session))


def main() -> int:
    if SCENARIO == "hang":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    call: dict[str, Any] = {
        "argv": sys.argv[1:],
        "env": dict(os.environ),
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "cwd": os.getcwd(),
        "prompts": [],
    }
    resume = argument("--resume")
    if resume is not None:
        stored = STATE / f"{resume}.json"
        if not stored.is_file():
            sys.stderr.write(f"No conversation found with session ID: {resume}\n")
            sys.stderr.flush()
            record(call)
            message = f"No conversation found with session ID: {resume}"
            send(
                result(
                    {"id": resume, "total": 0},
                    subtype="error_during_execution",
                    is_error=True,
                    num_turns=0,
                    errors=[message],
                )
            )
            return 1
        session = json.loads(stored.read_text())
    else:
        session = {"id": str(uuid.uuid4()), "total": 0.0, "prompts": []}
    sys.stderr.write(f"fake claude {VERSION} starting\n")
    sys.stderr.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        if message["type"] == "control_request":
            request_id = message["request_id"]
            subtype = message["request"]["subtype"]
            if subtype == "interrupt" and SCENARIO == "hang":
                continue
            send(
                {
                    "type": "control_response",
                    "response": {
                        "subtype": "success",
                        "request_id": request_id,
                        "response": {"commands": []} if subtype == "initialize" else {},
                    },
                }
            )
            if subtype == "interrupt":
                session["total"] = round(session["total"] + COST / 10, 6)
                save(session)
                send(
                    {
                        "type": "user",
                        "message": {"role": "user", "content": "[Request interrupted by user]"},
                    }
                )
                send(
                    result(
                        session,
                        subtype="error_during_execution",
                        is_error=True,
                        terminal_reason="aborted_streaming",
                        stop_reason=None,
                    )
                )
        elif message["type"] == "user":
            prompt = message["message"]["content"]
            call["prompts"].append(prompt)
            session["prompts"].append(prompt)
            record(call)
            code = turn(session, prompt)
            if code is not None:
                return code
    if SCENARIO == "hang":
        while True:
            time.sleep(1)
    return 0


def turn(session: dict[str, Any], prompt: str) -> int | None:
    """Answer one user message; an exit code ends the process."""
    send(
        {
            "type": "system",
            "subtype": "init",
            "session_id": session["id"],
            "cwd": os.getcwd(),
            "model": argument("--model") or "fake-model",
            "tools": ["Bash", "Read", "Write"],
            "permissionMode": argument("--permission-mode") or "default",
            "claude_code_version": VERSION,
        }
    )
    if SCENARIO == "crash":
        sys.stderr.write("fake claude: something broke\n")
        sys.stderr.flush()
        return 3
    if SCENARIO == "bad_json":
        sys.stdout.write('{"type": "assistant", "message": \n')
        sys.stdout.flush()
        return 0
    send(
        {
            "type": "assistant",
            "message": {
                "role": "assistant",
                "model": "fake-model",
                "content": [{"type": "text", "text": f"working on: {prompt[:40]}"}],
            },
            "parent_tool_use_id": None,
            "session_id": session["id"],
        }
    )
    if SCENARIO == "todos":  # the agent plans with TodoWrite, then edits a file
        todos = [
            {"content": "Read the issue", "status": "completed", "activeForm": "Reading"},
            {"content": "Fix the retry", "status": "in_progress", "activeForm": "Fixing"},
        ]
        edit = {"file_path": os.path.join(os.getcwd(), "retry.py"), "old_string": "a"}
        send(
            {
                "type": "assistant",
                "message": {
                    "role": "assistant",
                    "model": "fake-model",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "t1",
                            "name": "TodoWrite",
                            "input": {"todos": todos},
                        },
                        {"type": "tool_use", "id": "t2", "name": "Edit", "input": edit},
                    ],
                },
                "parent_tool_use_id": None,
                "session_id": session["id"],
            }
        )
    if SCENARIO in ("stall", "hang"):
        return None
    session["total"] = round(session["total"] + COST, 6)
    save(session)
    if SCENARIO == "api_error":
        send(
            result(
                session,
                is_error=True,
                api_error_status=529,
                result="API Error: 529 overloaded",
                terminal_reason="api_error",
            )
        )
        return 1
    if SCENARIO == "max_turns":
        send(result(session, subtype="error_max_turns", is_error=True, num_turns=3))
        return 1
    if SCENARIO == "budget":
        send(result(session, subtype="error_max_budget_usd", is_error=True))
        return 1
    send(result(session, result=f"done: {len(session['prompts'])} prompts in this session"))
    return None


def record(call: dict[str, Any]) -> None:
    with (STATE / "calls.jsonl").open("a") as calls:
        calls.write(json.dumps(call) + "\n")


if __name__ == "__main__":
    sys.exit(main())
