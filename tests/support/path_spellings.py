"""Other spellings of the server's paths, for the API-key tests: a front door that compares
paths must treat none of them as a public one (tests/unit/test_gate.py over ASGI,
tests/e2e/test_production.py over HTTP, each adding the spellings only its way can carry)."""

PATH_SPELLINGS = [
    "/health/",
    "//health",
    "/HEALTH",
    "/health/.",
    "/health%2F",
    "/%2Fhealth",
    "/%68ealth",
    "/metrics",
    "/metrics/",
    "//metrics",
    "/v1/models/",
    "//v1/models",
    "/V1/models",
    "/v1//models",
    "/v1/%6dodels",
    "/v1/chat/completions/",
    "/v1/chat%2Fcompletions",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/nothing",
    "/",
]
