"""Pure rules: the nouns every layer shares and the decisions made from them.

Nothing here does I/O or imports another layer of claude-hooks: the scheduler's choice, the
share of instances between nodes, budgets, the API breaker and the address check are
functions of what their callers hand them, so they are tested without a database or a clock.
"""
