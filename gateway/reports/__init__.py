"""Operators' reports on what was disseminated: the annex-2 备案表 of a warning (`filing`) and
the art. 17/27 figures (`stats` defines them, `stats_query` reads a GET /v1/stats query,
`stats_answer` answers it from the store's aggregates)."""
