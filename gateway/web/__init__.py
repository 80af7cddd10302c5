"""The HTTP API of design.md's contract (aiohttp): the routes of each resource, who may call
them (`guard`), the app's typed keys (`keys`) and the OpenAPI document (openapi.json)."""
