"""Forgejo and Gitea: webhook verification and decoding, and the payload models the flows read."""
