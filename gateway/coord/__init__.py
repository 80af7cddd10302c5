"""Coordination of several gateway processes sharing one PostgreSQL store, through Redis
(design.md "Storage and several processes"): the delivery queue, leases and take-overs, the
sweeper, control messages, and the flow state every process must agree on."""
