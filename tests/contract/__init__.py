"""The protocol's contract: what every store (memory, Redis, Redis Cluster) must answer alike."""
