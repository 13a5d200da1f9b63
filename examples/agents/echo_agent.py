"""A stand-in agent for trying claude-hooks without Claude: it prints the task it was given.

The `command` runner passes the task as JSON on stdin and CLAUDE_HOOKS_* variables; exit 0
means the task succeeded. Replace it with any agent CLI.
"""

import json
import os
import sys

task = json.load(sys.stdin)
print(f"{os.environ['CLAUDE_HOOKS_AGENT']} got {task['kind']} for {task['repo']}#{task['number']}")
print(json.dumps(task["payload"], indent=2)[:2000])
