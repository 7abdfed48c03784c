"""The realtime side: the websocket consumer (`consumer.py`) and the generation engine that runs
each reply as its own task (`generation.py`: one reply; `engine.py`: the manager of a process's
replies). `routing.py` maps the websocket URL, `origins.py` checks where a socket comes from and
`lifespan.py` starts and stops the engine with the server."""
