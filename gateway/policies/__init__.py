"""Policies: small, pure decisions the flow asks for. `authority` (annex 1, art. 18, 26),
`routing` (which endpoints serve a warning, its blind spots), `retry` (when to try again),
`rate` (a channel's pace), `breaker` (when to stop and retry an endpoint). They import no
channel, store or web module."""
