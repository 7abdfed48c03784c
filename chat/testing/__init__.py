"""Test support shared by the tests and the benchmarks (`bench/`): the stand-in upstream
(`fakeupstream/`, also `make demo`), the helpers that start the site as real processes
(`processes.py`) and a websocket client through the real ASGI stack (`wsclient.py`)."""
