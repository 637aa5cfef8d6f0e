"""What the tests and the bench share: the API client (helpers), real servers (servers), the OpenAPI document (openapi).

No fixtures and nothing from bench/ here: the bench imports this package, and no test imports the bench.
"""
