"""The Redis backend (one Redis, or Redis Cluster with a `redis+cluster://` URL): see backend.py for its parts."""

from .backend import LANES, RedisBackend

__all__ = ["LANES", "RedisBackend"]
