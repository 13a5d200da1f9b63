"""The service: intake of deliveries, the flows, the pool of instances, the node in its
cluster, limits, and the background duties; `runtime.Service` builds it all.

Above the agents, the store and the forge; below the edges (`web`, `cli`), which it never
imports.
"""
