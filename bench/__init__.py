"""The benchmark: the floor, held polls, ping-pong, throughput (two clients) and call set-ups on a real gunicorn.

`make bench` (or `python -m bench`) starts the servers itself, pins them and
this load process to different CPUs, and prints one table; see
docs/benchmarks.md for the method and the last full run.
"""
