"""dsched's scheduler core: pure logic fed events, returning effects.

Nothing in this package does I/O, reads a clock or draws unseeded randomness: time arrives as
``now_ms`` on every input and randomness as an explicit ``random.Random``. That is what lets the
node (aiohttp + Redis) and the simulation (SimPy) drive the very same code.
"""
