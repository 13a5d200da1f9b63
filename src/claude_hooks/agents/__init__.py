"""What runs an agent: runners, the sandbox, workspaces, forge tools, prompts, environment.

Above the store and the forge, below the service: an agent's task is carried out here; when
and where it runs is the service's decision.
"""
