"""What the documents promise stays true: README, docs/, the OpenAPI document, and the packaging (.ci, Makefile)."""
