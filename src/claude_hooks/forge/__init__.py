"""The forge: Forgejo and Gitea's webhooks, payload models and REST API, and the service's
side of it (one client per type token, permission checks, look-ups).

Below the service and the agents, beside the store: nothing here reads or writes the database.
"""
