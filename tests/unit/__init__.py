"""Tests of one part at a time (a class, a module, one backend's own promises), in process."""
