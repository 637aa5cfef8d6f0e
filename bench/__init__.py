"""The benchmark of issue 5: held polls, ping-pong latency and throughput against a real gunicorn.

`make bench` (or `python -m bench`) starts the servers itself, pins them and
this load process to different CPUs, and prints one table; see
docs/benchmarks.md for the method and the last full run.
"""
